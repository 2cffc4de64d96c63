//! `POST /_matrix/client/unstable/org.matrix.simplified_msc3575/sync`: simplified sliding
//! sync (MSC4186).

use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json as JsonReply, Router};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::accounts::presence;
use crate::error::Result;
use crate::http::extract::{Auth, Json, Query};
use crate::sync::sliding;

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync", post(sync))
}

#[derive(Deserialize)]
struct SlidingQuery {
    #[serde(default)]
    pos: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    /// As `/sync`'s (MSC4186 keeps it): `online` (the default), `unavailable` or `offline`.
    #[serde(default)]
    set_presence: Option<String>,
}

async fn sync(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SlidingQuery>,
    Json(body): Json<sliding::Body>,
) -> Result<JsonReply<Value>> {
    // The user counts as syncing until the answer (presence), as with `/sync`.
    let _syncing = presence::syncing(&state, &me.user_id, q.set_presence.as_deref()).await?;
    let req = sliding::Request { pos: q.pos, timeout: Duration::from_millis(q.timeout.unwrap_or(0)), body };
    Ok(JsonReply(sliding::sync(&state, &me, req).await?))
}
