//! Reporting rooms, events and users to the server's admins.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ruma::{EventId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::{parse_room_id, visible_event};
use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::{rooms, storage};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/rooms/{room_id}/report/{event_id}"), post(report_event))
        .route(v3!("/rooms/{room_id}/report"), post(report_room))
        .route(v3!("/users/{user_id}/report"), post(report_user))
}

#[derive(Deserialize)]
struct EventReport {
    #[serde(default)]
    reason: Option<String>,
    /// Removed from the spec in v1.18; still accepted from older clients.
    #[serde(default)]
    score: Option<i64>,
}

async fn report_event(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<EventReport>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let not_found = || Error::not_found("The event was not found or you are not joined to the room");
    let event_id = EventId::parse(&event_id).map_err(|_| not_found())?;
    // The reporter must be joined and able to see the event (404 otherwise, as the spec says).
    let joined = storage::rooms::membership(&state.db, room_id.as_str(), me.user_id.as_str()).await?;
    if joined.as_deref() != Some("join") {
        return Err(not_found());
    }
    visible_event(&state, &me, &room_id, &event_id).await?;
    let mut tx = state.db.begin().await?;
    storage::reports::report_event(
        &mut tx,
        room_id.as_str(),
        Some(event_id.as_str()),
        me.user_id.as_str(),
        body.reason.as_deref(),
        body.score,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(%room_id, %event_id, reporter = %me.user_id, "event reported");
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct Report {
    reason: String,
}

async fn report_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<Report>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    rooms::room_version(&state, &room_id).await?;
    let mut tx = state.db.begin().await?;
    storage::reports::report_event(&mut tx, room_id.as_str(), None, me.user_id.as_str(), Some(&body.reason), None)
        .await?;
    tx.commit().await?;
    tracing::info!(%room_id, reporter = %me.user_id, "room reported");
    Ok(Json(json!({})))
}

async fn report_user(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<Report>,
) -> Result<Json<Value>> {
    let user_id = UserId::parse(&user_id).map_err(|_| Error::invalid_param(format!("Invalid user ID {user_id}")))?;
    // Users of other servers cannot be looked up here; they are reported as given.
    let local = user_id.server_name().as_str() == state.config.server_name;
    if local && storage::users::get(&state.db, user_id.as_str()).await?.is_none() {
        return Err(Error::not_found("The user was not found"));
    }
    let mut tx = state.db.begin().await?;
    storage::reports::report_user(&mut tx, user_id.as_str(), me.user_id.as_str(), &body.reason).await?;
    tx.commit().await?;
    tracing::info!(target_user = %user_id, reporter = %me.user_id, "user reported");
    Ok(Json(json!({})))
}
