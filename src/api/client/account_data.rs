//! Account data: global and per room.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use ruma::{OwnedRoomId, OwnedUserId};
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/user/{user_id}/account_data/{data_type}"), get(get_global).put(put_global))
        .route(v3!("/user/{user_id}/rooms/{room_id}/account_data/{data_type}"), get(get_room).put(put_room))
}

fn check_owner(me: &Identity, user_id: &str) -> Result<()> {
    let user_id = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    if user_id != me.user_id {
        return Err(Error::forbidden("Cannot access another user's account data"));
    }
    Ok(())
}

fn parse_room(room_id: &str) -> Result<OwnedRoomId> {
    OwnedRoomId::try_from(room_id).map_err(|_| Error::invalid_param("Invalid room ID"))
}

/// Types the server manages itself; clients change them through their own endpoints.
fn check_writable(data_type: &str, room: bool) -> Result<()> {
    let server_owned = if room { data_type == "m.fully_read" } else { data_type == "m.push_rules" };
    if server_owned {
        return Err(Error::matrix(
            StatusCode::METHOD_NOT_ALLOWED,
            "M_BAD_JSON",
            format!("Cannot set {data_type} through the account data API"),
        ));
    }
    Ok(())
}

async fn read(state: &AppState, me: &Identity, room_id: &str, data_type: &str) -> Result<Json<Value>> {
    match storage::account_data::get(&state.db, me.user_id.as_str(), room_id, data_type).await? {
        Some(content) => Ok(Json(serde_json::from_str(&content).map_err(|e| Error::Internal(e.into()))?)),
        None => Err(Error::not_found("Account data not found")),
    }
}

async fn write(state: &AppState, me: &Identity, room_id: &str, data_type: &str, content: Value) -> Result<Json<Value>> {
    if !content.is_object() {
        return Err(Error::bad_json("Account data must be a JSON object"));
    }
    let mut tx = state.db.begin().await?;
    storage::account_data::put(&mut tx, me.user_id.as_str(), room_id, data_type, &content.to_string()).await?;
    tx.commit().await?;
    state.notifier.notify([&*me.user_id]);
    Ok(Json(json!({})))
}

async fn get_global(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, data_type)): Path<(String, String)>,
) -> Result<Json<Value>> {
    check_owner(&me, &user_id)?;
    read(&state, &me, "", &data_type).await
}

async fn put_global(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, data_type)): Path<(String, String)>,
    extract::Json(content): extract::Json<Value>,
) -> Result<Json<Value>> {
    check_owner(&me, &user_id)?;
    check_writable(&data_type, false)?;
    write(&state, &me, "", &data_type, content).await
}

async fn get_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, data_type)): Path<(String, String, String)>,
) -> Result<Json<Value>> {
    check_owner(&me, &user_id)?;
    let room_id = parse_room(&room_id)?;
    read(&state, &me, room_id.as_str(), &data_type).await
}

async fn put_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, room_id, data_type)): Path<(String, String, String)>,
    extract::Json(content): extract::Json<Value>,
) -> Result<Json<Value>> {
    check_owner(&me, &user_id)?;
    let room_id = parse_room(&room_id)?;
    check_writable(&data_type, true)?;
    write(&state, &me, room_id.as_str(), &data_type, content).await
}
