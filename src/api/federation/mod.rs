//! The server-server API.

mod auth;
mod keys;
mod membership;
mod query;
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
        .merge(keys::router())
        .merge(membership::router())
        .merge(query::router())
        .merge(user::router())
        .layer(middleware::from_fn(auth::buffer_body))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
}
