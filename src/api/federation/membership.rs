//! Membership handshakes with other servers: `make_join`/`send_join`,
//! `make_leave`/`send_leave`, `make_knock`/`send_knock`, and `invite` (v2).

use axum::extract::{RawQuery, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use ruma::{CanonicalJsonObject, OwnedEventId, OwnedRoomId, OwnedUserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::FederationAuth;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Path};
use crate::rooms::federation::{self, Handshake};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/make_join/{room_id}/{user_id}", get(make_join))
        .route("/_matrix/federation/v2/send_join/{room_id}/{event_id}", put(send_join))
        .route("/_matrix/federation/v1/make_leave/{room_id}/{user_id}", get(make_leave))
        .route("/_matrix/federation/v2/send_leave/{room_id}/{event_id}", put(send_leave))
        .route("/_matrix/federation/v1/make_knock/{room_id}/{user_id}", get(make_knock))
        .route("/_matrix/federation/v1/send_knock/{room_id}/{event_id}", put(send_knock))
        .route("/_matrix/federation/v2/invite/{room_id}/{event_id}", put(invite))
}

fn room_and_user(room_id: String, user_id: String) -> Result<(OwnedRoomId, OwnedUserId)> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let user_id = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    Ok((room_id, user_id))
}

fn room_and_event(room_id: String, event_id: String) -> Result<(OwnedRoomId, OwnedEventId)> {
    let room_id = OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    Ok((room_id, event_id))
}

/// The room versions of the repeated `ver` parameter; without any, only version 1 (spec).
fn versions_param(query: Option<&str>) -> Vec<String> {
    let versions: Vec<String> = url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "ver")
        .map(|(_, value)| value.into_owned())
        .collect();
    if versions.is_empty() { vec!["1".to_owned()] } else { versions }
}

async fn make(
    state: &AppState,
    origin: &ruma::ServerName,
    (room_id, user_id): (String, String),
    kind: Handshake,
    query: Option<&str>,
) -> Result<Json<Value>> {
    let (room_id, user_id) = room_and_user(room_id, user_id)?;
    let supported = versions_param(query);
    let (version, event) = federation::make_membership(state, origin, &room_id, &user_id, kind, &supported).await?;
    Ok(Json(json!({ "room_version": version, "event": event })))
}

async fn make_join(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(ids): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    make(&state, &origin, ids, Handshake::Join, query.as_deref()).await
}

async fn make_leave(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(ids): Path<(String, String)>,
) -> Result<Json<Value>> {
    make(&state, &origin, ids, Handshake::Leave, None).await
}

async fn make_knock(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(ids): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    make(&state, &origin, ids, Handshake::Knock, query.as_deref()).await
}

async fn send_join(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path((room_id, event_id)): Path<(String, String)>,
    extract::Json(event): extract::Json<CanonicalJsonObject>,
) -> Result<Json<Value>> {
    let (room_id, event_id) = room_and_event(room_id, event_id)?;
    let join = federation::accept_membership(&state, &origin, &room_id, &event_id, Handshake::Join, event).await?;
    Ok(Json(federation::join_answer(&state, &join).await?))
}

async fn send_leave(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path((room_id, event_id)): Path<(String, String)>,
    extract::Json(event): extract::Json<CanonicalJsonObject>,
) -> Result<Json<Value>> {
    let (room_id, event_id) = room_and_event(room_id, event_id)?;
    federation::accept_membership(&state, &origin, &room_id, &event_id, Handshake::Leave, event).await?;
    Ok(Json(json!({})))
}

async fn send_knock(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path((room_id, event_id)): Path<(String, String)>,
    extract::Json(event): extract::Json<CanonicalJsonObject>,
) -> Result<Json<Value>> {
    let (room_id, event_id) = room_and_event(room_id, event_id)?;
    let knock = federation::accept_membership(&state, &origin, &room_id, &event_id, Handshake::Knock, event).await?;
    Ok(Json(federation::knock_answer(&state, &knock).await?))
}

#[derive(Deserialize)]
struct InviteBody {
    room_version: String,
    event: CanonicalJsonObject,
    #[serde(default)]
    invite_room_state: Vec<Value>,
}

async fn invite(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path((room_id, event_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<InviteBody>,
) -> Result<Json<Value>> {
    let (room_id, event_id) = room_and_event(room_id, event_id)?;
    let InviteBody { room_version, event, invite_room_state } = body;
    let signed =
        federation::receive_invite(&state, &origin, &room_id, &event_id, &room_version, event, invite_room_state)
            .await?;
    Ok(Json(json!({ "event": signed })))
}
