//! The server-server API.

mod keys;

use axum::Router;

use crate::AppState;

pub fn router() -> Router<AppState> {
    Router::new().merge(keys::router())
}
