//! The client-server API. Each module serves one chapter; its `router` lists its URLs.

mod account;
mod account_data;
mod devices;
mod filter;
mod login;
mod membership;
mod messages;
mod profile;
mod push;
mod register;
pub(crate) mod rooms;
mod sync;
mod user_directory;
mod versions;

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
        .merge(account::router())
        .merge(devices::router())
        .merge(profile::router())
        .merge(account_data::router())
        .merge(filter::router())
        .merge(user_directory::router())
        .merge(rooms::router())
        .merge(membership::router())
        .merge(messages::router())
        .merge(sync::router())
        .merge(push::router())
}
