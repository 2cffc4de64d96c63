//! Typing notifications: who is typing in a room, until when.

use std::time::Duration;

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use ruma::UserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::{parse_room_id, require_joined};
use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::rooms::typing::{self, MAX_TIMEOUT};

/// How long a typing notification lasts when the client gives no timeout (as Synapse).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/rooms/{room_id}/typing/{user_id}"), put(set_typing))
}

#[derive(Deserialize)]
struct TypingBody {
    typing: bool,
    /// Milliseconds.
    #[serde(default)]
    timeout: Option<u64>,
}

async fn set_typing(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, user_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<TypingBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let user_id = UserId::parse(&user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))?;
    if user_id != me.user_id {
        return Err(Error::forbidden("You may only set your own typing state"));
    }
    require_joined(&state, &room_id, &me.user_id).await?;
    let timeout = body.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_millis).min(MAX_TIMEOUT);
    typing::set(&state, &room_id, &me.user_id, body.typing, timeout).await?;
    Ok(Json(json!({})))
}
