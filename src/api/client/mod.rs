//! The client-server API. Each module serves one chapter; its `router` lists its URLs.

mod account;
mod account_data;
mod admin;
mod appservice;
mod dehydrated_device;
mod devices;
pub(crate) mod directory;
mod filter;
mod keys;
mod login;
pub mod media;
mod membership;
mod messages;
mod openid;
mod presence;
mod profile;
mod push;
mod receipts;
mod register;
mod report;
mod room_keys;
pub(crate) mod rooms;
mod search;
mod sliding_sync;
mod spaces;
mod sso;
mod sync;
mod timestamp;
mod to_device;
mod typing;
mod upgrade;
mod user_directory;
mod versions;
mod voip;

use axum::Router;

use crate::AppState;

/// Prefix of the current client-server API paths.
macro_rules! v3 {
    ($path:literal) => {
        concat!("/_matrix/client/v3", $path)
    };
}
pub(crate) use v3;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(versions::router())
        .merge(register::router())
        .merge(login::router())
        .merge(sso::router())
        .merge(account::router())
        .merge(admin::router())
        .merge(appservice::router())
        .merge(devices::router())
        .merge(profile::router())
        .merge(account_data::router())
        .merge(filter::router())
        .merge(user_directory::router())
        .merge(rooms::router())
        .merge(directory::router())
        .merge(typing::router())
        .merge(receipts::router())
        .merge(presence::router())
        .merge(report::router())
        .merge(upgrade::router())
        .merge(timestamp::router())
        .merge(voip::router())
        .merge(membership::router())
        .merge(messages::router())
        .merge(sync::router())
        .merge(sliding_sync::router())
        .merge(push::router())
        .merge(media::router())
        .merge(keys::router())
        .merge(to_device::router())
        .merge(room_keys::router())
        .merge(search::router())
        .merge(spaces::router())
        .merge(openid::router())
        .merge(dehydrated_device::router())
}
