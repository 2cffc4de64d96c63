//! The Synapse-compatible admin API under `/_synapse/admin`, for server admins only (the
//! `Admin` extractor answers 403 `M_FORBIDDEN` to others), except shared-secret
//! registration, which proves itself with the secret. One module per resource; the
//! endpoints are listed in docs/admin.md.

mod event_reports;
mod media;
mod purge_history;
mod register;
mod registration_tokens;
mod rooms;
mod server_notices;
mod users;

pub(crate) use users::{parse_user_id, whois_json};

use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::AppState;
use crate::http::extract::Admin;

/// Paths of the admin API, by version.
macro_rules! admin_v1 {
    ($path:literal) => {
        concat!("/_synapse/admin/v1", $path)
    };
}
macro_rules! admin_v2 {
    ($path:literal) => {
        concat!("/_synapse/admin/v2", $path)
    };
}
pub(crate) use {admin_v1, admin_v2};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/server_version"), get(server_version))
        .merge(register::router())
        .merge(users::router())
        .merge(rooms::router())
        .merge(registration_tokens::router())
        .merge(event_reports::router())
        .merge(media::router())
        .merge(purge_history::router())
        .merge(server_notices::router())
}

async fn server_version(Admin(_): Admin) -> Json<Value> {
    Json(json!({ "server_version": concat!("Plexus ", env!("CARGO_PKG_VERSION")) }))
}

/// `from`/`limit` paging as the admin API has it: `next_token` is the offset of the next
/// page, present only when there is one.
fn next_token(from: i64, returned: usize, total: i64) -> Option<i64> {
    let next = from + returned as i64;
    (next < total && returned > 0).then_some(next)
}

/// `dir` of the admin API: `f` (default) or `b`.
fn descending(dir: Option<&str>) -> crate::error::Result<bool> {
    match dir {
        None | Some("f") => Ok(false),
        Some("b") => Ok(true),
        Some(_) => Err(crate::error::Error::invalid_param("Unknown direction: use f or b")),
    }
}
