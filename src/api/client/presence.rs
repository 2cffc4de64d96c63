//! Presence: online, unavailable or offline, with a status message.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::presence;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/presence/{user_id}/status"), get(get_presence).put(set_presence))
}

fn parse_user(user_id: &str) -> Result<OwnedUserId> {
    UserId::parse(user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))
}

#[derive(Deserialize)]
struct SetPresence {
    presence: String,
    #[serde(default)]
    status_msg: Option<String>,
}

async fn set_presence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<SetPresence>,
) -> Result<Json<Value>> {
    let user_id = parse_user(&user_id)?;
    if user_id != me.user_id {
        return Err(Error::forbidden("You cannot set the presence of another user"));
    }
    if !presence::STATES.contains(&body.presence.as_str()) {
        return Err(Error::invalid_param(format!("Invalid presence state {:?}", body.presence)));
    }
    presence::set(&state, &me.user_id, &body.presence, body.status_msg.as_deref()).await?;
    Ok(Json(json!({})))
}

async fn get_presence(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = parse_user(&user_id)?;
    // Presence is shared with the users one shares a room with (as Synapse).
    let visible = user_id == me.user_id
        || storage::rooms::share_joined_room(&state.db, me.user_id.as_str(), user_id.as_str()).await?;
    if !visible {
        return Err(Error::forbidden("You are not allowed to see their presence"));
    }
    match storage::presence::get(&state.db, user_id.as_str()).await? {
        Some(presence) if state.presence.enabled() => Ok(Json(presence.content(storage::now_ms()))),
        _ => Ok(Json(json!({ "presence": "offline" }))),
    }
}
