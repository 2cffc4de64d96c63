//! Typing notifications: who is typing in a room, until when.

use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use ruma::{OwnedUserId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::{parse_room_id, require_joined};
use super::v3;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::rooms::typing::MAX_TIMEOUT;
use crate::{AppState, Services, storage};

/// How long a typing notification lasts when the client gives no timeout (as Synapse).
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/rooms/{room_id}/typing/{user_id}"), put(set_typing))
}

/// Wakes the long-polls of a room's members (for news that is not a room event).
pub(super) async fn wake_room(svc: &Services, room_id: &RoomId) -> Result<()> {
    let users: Vec<OwnedUserId> = storage::rooms::interested_users(&svc.db, room_id.as_str())
        .await?
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u).ok())
        .collect();
    svc.notifier.notify(users.iter().map(|u| &**u));
    Ok(())
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
    let changed = if body.typing {
        let timeout = body.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_millis).min(MAX_TIMEOUT);
        let changed = state.typing.start(&room_id, &me.user_id, Instant::now() + timeout);
        tokio::spawn(expire_after(state.clone(), timeout));
        changed
    } else {
        state.typing.stop(&room_id, &me.user_id)
    };
    if changed {
        wake_room(&state, &room_id).await?;
    }
    Ok(Json(json!({})))
}

/// Drops the notifications expired after `delay` and wakes the rooms whose list changed.
async fn expire_after(state: AppState, delay: Duration) {
    tokio::time::sleep(delay).await;
    for room in state.typing.expire(Instant::now()) {
        if let Err(e) = wake_room(&state, &room).await {
            tracing::warn!(%room, error = %e, "cannot wake members after typing expired");
        }
    }
}
