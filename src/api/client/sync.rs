//! `GET /sync`.

use std::time::Duration;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::v3;
use crate::AppState;
use crate::accounts::presence;
use crate::error::Result;
use crate::http::extract::{Auth, Query};
use crate::sync::token::SyncToken;
use crate::sync::{filter, v2};

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/sync"), get(sync))
}

#[derive(Deserialize)]
struct SyncQuery {
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    timeout: Option<u64>,
    #[serde(default)]
    full_state: Option<bool>,
    #[serde(default)]
    filter: Option<String>,
    #[serde(default)]
    set_presence: Option<String>,
}

async fn sync(State(state): State<AppState>, Auth(me): Auth, Query(q): Query<SyncQuery>) -> Result<Json<Value>> {
    // The user counts as syncing until the answer (presence).
    let _syncing = presence::syncing(&state, &me.user_id, q.set_presence.as_deref()).await?;
    let req = v2::SyncRequest {
        since: q.since.as_deref().map(SyncToken::parse).transpose()?,
        timeout: Duration::from_millis(q.timeout.unwrap_or(0)),
        full_state: q.full_state.unwrap_or(false),
        filter: filter::load(&state, &me.user_id, q.filter.as_deref()).await?,
    };
    Ok(Json(v2::sync(&state, &me, req).await?))
}
