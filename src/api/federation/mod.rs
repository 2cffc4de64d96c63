//! The server-server API.

mod auth;
mod directory;
mod events;
mod keys;
mod media;
mod membership;
mod openid;
mod query;
mod send;
mod space;
mod user;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::middleware;

pub use self::auth::FederationAuth;
use crate::AppState;

/// Largest request body of the federation API: a transaction holds up to 50 PDUs of 64 KiB
/// and 100 EDUs.
const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn router() -> Router<AppState> {
    Router::new()
        .merge(directory::router())
        .merge(events::router())
        .merge(keys::router())
        .merge(media::router())
        .merge(membership::router())
        .merge(send::router())
        .merge(query::router())
        .merge(user::router())
        .merge(space::router())
        .merge(openid::router())
        .layer(middleware::from_fn(auth::buffer_body))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
