//! Purge history: delete a room's events before an event or a time (Synapse's API), and
//! the status of a purge.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{EventId, OwnedEventId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin_v1;
use crate::AppState;
use crate::admin::purge::{self, Status, UpTo};
use crate::api::client::rooms::parse_room_id;
use crate::error::{Error, Result};
use crate::http::extract::{self, Admin, Path};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/purge_history/{room_id}"), post(purge_history))
        .route(admin_v1!("/purge_history/{room_id}/{event_id}"), post(purge_history_to_event))
        .route(admin_v1!("/purge_history_status/{purge_id}"), get(status))
}

#[derive(Deserialize)]
struct PurgeBody {
    #[serde(default)]
    delete_local_events: bool,
    #[serde(default)]
    purge_up_to_event_id: Option<String>,
    #[serde(default)]
    purge_up_to_ts: Option<i64>,
}

async fn purge_history(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<PurgeBody>,
) -> Result<Json<Value>> {
    start(&state, &room_id, None, body).await
}

async fn purge_history_to_event(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((room_id, event_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<PurgeBody>,
) -> Result<Json<Value>> {
    start(&state, &room_id, Some(event_id), body).await
}

/// The point comes from the path, else `purge_up_to_event_id`, else `purge_up_to_ts`.
async fn start(state: &AppState, room_id: &str, event_id: Option<String>, body: PurgeBody) -> Result<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    let parse_event = |id: String| -> Result<OwnedEventId> {
        EventId::parse(&id).map_err(|_| Error::invalid_param("Invalid event ID"))
    };
    let up_to = match (event_id.or(body.purge_up_to_event_id), body.purge_up_to_ts) {
        (Some(id), _) => UpTo::Event(parse_event(id)?),
        (None, Some(ts)) => UpTo::Ts(ts),
        (None, None) => return Err(Error::bad_json("must specify purge_up_to_event_id or purge_up_to_ts")),
    };
    let purge_id = purge::start(state, &room_id, up_to, body.delete_local_events).await?;
    Ok(Json(json!({ "purge_id": purge_id })))
}

async fn status(State(state): State<AppState>, Admin(_): Admin, Path(purge_id): Path<String>) -> Result<Json<Value>> {
    Ok(Json(match state.history_purges.status(&purge_id).ok_or_else(|| Error::not_found("purge id not found"))? {
        Status::Active => json!({ "status": "active" }),
        Status::Complete => json!({ "status": "complete" }),
        Status::Failed(error) => json!({ "status": "failed", "error": error }),
    }))
}
