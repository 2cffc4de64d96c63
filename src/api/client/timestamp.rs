//! Jumping to a date: the event closest to a timestamp.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::directory::can_peek;
use super::rooms::parse_room_id;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{Auth, Path, Query};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/client/v1/rooms/{room_id}/timestamp_to_event", get(timestamp_to_event))
}

#[derive(Deserialize)]
struct TimestampQuery {
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    dir: Option<String>,
}

async fn timestamp_to_event(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<TimestampQuery>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let ts = q.ts.ok_or_else(|| Error::missing_param("Missing ts"))?;
    let forwards = match q.dir.as_deref() {
        Some("f") => true,
        Some("b") => false,
        Some(other) => return Err(Error::invalid_param(format!("dir must be f or b, not {other:?}"))),
        None => return Err(Error::missing_param("Missing dir")),
    };
    if !can_peek(&state, &room_id, &me.user_id).await? {
        return Err(Error::forbidden("You are not a member of this room"));
    }
    let (event_id, origin_server_ts) =
        storage::events::closest_to_ts(&state.db, room_id.as_str(), ts, forwards).await?.ok_or_else(|| {
            let direction = if forwards { "forward" } else { "backward" };
            Error::not_found(format!("Unable to find event from {ts} in {direction} direction"))
        })?;
    Ok(Json(json!({ "event_id": event_id, "origin_server_ts": origin_server_ts })))
}
