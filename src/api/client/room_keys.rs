//! Server-side key backups (`room_keys`).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::v3;
use crate::AppState;
use crate::e2ee::backup::{self, KeyBackupData, RoomKeyBackup, Selection};
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path, Query};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/room_keys/version"), post(create_version).get(current_version))
        .route(v3!("/room_keys/version/{version}"), get(get_version).put(update_version).delete(delete_version))
        .route(v3!("/room_keys/keys"), get(get_all).put(put_all).delete(delete_all))
        .route(v3!("/room_keys/keys/{room_id}"), get(get_room).put(put_room).delete(delete_room))
        .route(v3!("/room_keys/keys/{room_id}/{session_id}"), get(get_session).put(put_session).delete(delete_session))
}

#[derive(Deserialize)]
struct VersionBody {
    algorithm: String,
    auth_data: Map<String, Value>,
    #[serde(default)]
    version: Option<String>,
}

async fn create_version(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<VersionBody>,
) -> Result<Json<Value>> {
    let version = backup::create_version(&state, me.user_id.as_str(), &body.algorithm, &body.auth_data).await?;
    Ok(Json(json!({ "version": version })))
}

async fn current_version(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    Ok(Json(backup::get_version(&state, me.user_id.as_str(), None).await?))
}

async fn get_version(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(version): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(backup::get_version(&state, me.user_id.as_str(), Some(&version)).await?))
}

async fn update_version(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(version): Path<String>,
    extract::Json(body): extract::Json<VersionBody>,
) -> Result<Json<Value>> {
    if body.version.as_ref().is_some_and(|v| *v != version) {
        return Err(Error::invalid_param("The version in the body does not match the version in the path"));
    }
    backup::update_version(&state, me.user_id.as_str(), &version, &body.algorithm, &body.auth_data).await?;
    Ok(Json(json!({})))
}

async fn delete_version(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(version): Path<String>,
) -> Result<Json<Value>> {
    backup::delete_version(&state, me.user_id.as_str(), &version).await?;
    Ok(Json(json!({})))
}

/// The `version` query parameter every `room_keys/keys` request names.
#[derive(Deserialize)]
struct VersionParam {
    #[serde(default)]
    version: Option<String>,
}

impl VersionParam {
    fn required(self) -> Result<String> {
        self.version.ok_or_else(|| Error::missing_param("Missing the version query parameter"))
    }
}

#[derive(Deserialize)]
struct AllRoomsBody {
    rooms: BTreeMap<String, RoomKeyBackup>,
}

const ALL: Selection<'static> = Selection { room_id: None, session_id: None };

async fn get_all(State(state): State<AppState>, Auth(me): Auth, Query(q): Query<VersionParam>) -> Result<Json<Value>> {
    let rooms = backup::get_keys(&state, me.user_id.as_str(), &q.required()?, ALL).await?;
    Ok(Json(json!({ "rooms": rooms })))
}

async fn put_all(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<VersionParam>,
    extract::Json(body): extract::Json<AllRoomsBody>,
) -> Result<Json<Value>> {
    Ok(Json(backup::put_keys(&state, me.user_id.as_str(), &q.required()?, &body.rooms).await?))
}

async fn delete_all(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<VersionParam>,
) -> Result<Json<Value>> {
    Ok(Json(backup::delete_keys(&state, me.user_id.as_str(), &q.required()?, ALL).await?))
}

async fn get_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<VersionParam>,
) -> Result<Json<Value>> {
    let selection = Selection { room_id: Some(&room_id), session_id: None };
    let mut rooms = backup::get_keys(&state, me.user_id.as_str(), &q.required()?, selection).await?;
    Ok(Json(json!(rooms.remove(&room_id).unwrap_or_default())))
}

async fn put_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<VersionParam>,
    extract::Json(body): extract::Json<RoomKeyBackup>,
) -> Result<Json<Value>> {
    let rooms = BTreeMap::from([(room_id, body)]);
    Ok(Json(backup::put_keys(&state, me.user_id.as_str(), &q.required()?, &rooms).await?))
}

async fn delete_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<VersionParam>,
) -> Result<Json<Value>> {
    let selection = Selection { room_id: Some(&room_id), session_id: None };
    Ok(Json(backup::delete_keys(&state, me.user_id.as_str(), &q.required()?, selection).await?))
}

async fn get_session(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, session_id)): Path<(String, String)>,
    Query(q): Query<VersionParam>,
) -> Result<Json<Value>> {
    let selection = Selection { room_id: Some(&room_id), session_id: Some(&session_id) };
    let mut rooms = backup::get_keys(&state, me.user_id.as_str(), &q.required()?, selection).await?;
    let key = rooms
        .remove(&room_id)
        .and_then(|mut room| room.sessions.remove(&session_id))
        .ok_or_else(|| Error::not_found("Key not found"))?;
    Ok(Json(json!(key)))
}

async fn put_session(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, session_id)): Path<(String, String)>,
    Query(q): Query<VersionParam>,
    extract::Json(body): extract::Json<KeyBackupData>,
) -> Result<Json<Value>> {
    let room = RoomKeyBackup { sessions: BTreeMap::from([(session_id, body)]) };
    let rooms = BTreeMap::from([(room_id, room)]);
    Ok(Json(backup::put_keys(&state, me.user_id.as_str(), &q.required()?, &rooms).await?))
}

async fn delete_session(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, session_id)): Path<(String, String)>,
    Query(q): Query<VersionParam>,
) -> Result<Json<Value>> {
    let selection = Selection { room_id: Some(&room_id), session_id: Some(&session_id) };
    Ok(Json(backup::delete_keys(&state, me.user_id.as_str(), &q.required()?, selection).await?))
}
