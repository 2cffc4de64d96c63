//! Profiles: display name and avatar URL.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde_json::{Map, Value, json};

use super::v3;
use crate::AppState;
use crate::appservice;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::storage::{self, users::UserRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/profile/{user_id}"), get(profile))
        .route(v3!("/profile/{user_id}/{field}"), get(get_field).put(set_field))
}

async fn load(state: &AppState, user_id: &str) -> Result<UserRow> {
    let user = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    let mut row = storage::users::get(&state.db, user.as_str()).await?;
    // An appservice may create the users of its namespace when they are first looked up.
    if row.is_none() && appservice::query_user(state, &user).await? {
        row = storage::users::get(&state.db, user.as_str()).await?;
    }
    match row {
        Some(row) if !row.deactivated => Ok(row),
        _ => Err(Error::not_found("Profile not found")),
    }
}

fn profile_json(row: &UserRow) -> Value {
    let mut body = json!({});
    if let Some(name) = &row.displayname {
        body["displayname"] = json!(name);
    }
    if let Some(url) = &row.avatar_url {
        body["avatar_url"] = json!(url);
    }
    body
}

async fn profile(State(state): State<AppState>, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let row = load(&state, &user_id).await?;
    Ok(Json(profile_json(&row)))
}

async fn get_field(
    State(state): State<AppState>,
    Path((user_id, field)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let row = load(&state, &user_id).await?;
    let value = match field.as_str() {
        "displayname" => row.displayname,
        "avatar_url" => row.avatar_url,
        _ => return Err(Error::unrecognized()),
    };
    match value {
        Some(v) => Ok(Json(json!({ field: v }))),
        None => Err(Error::not_found(format!("No {field} set"))),
    }
}

async fn set_field(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, field)): Path<(String, String)>,
    extract::Json(body): extract::Json<Map<String, Value>>,
) -> Result<Json<Value>> {
    if user_id != me.user_id.as_str() {
        return Err(Error::forbidden("Cannot set another user's profile"));
    }
    if field != "displayname" && field != "avatar_url" {
        return Err(Error::unrecognized());
    }
    me.ensure_not_suspended()?;
    let value = body.get(&field).ok_or_else(|| Error::missing_param(format!("Missing {field}")))?;
    // Like Synapse, null and "" clear the field.
    let value = match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.as_str()),
        _ => return Err(Error::bad_json(format!("{field} must be a string"))),
    };
    if field == "displayname" && value.is_some_and(|n| n.len() > 256) {
        return Err(Error::bad_json("displayname is longer than 256 bytes"));
    }
    if field == "avatar_url" && value.is_some_and(|u| !u.starts_with("mxc://")) {
        return Err(Error::bad_json("avatar_url must be an mxc:// URI"));
    }
    let mut tx = state.db.begin().await?;
    if field == "displayname" {
        storage::users::set_displayname(&mut tx, me.user_id.as_str(), value).await?;
    } else {
        storage::users::set_avatar_url(&mut tx, me.user_id.as_str(), value).await?;
    }
    tx.commit().await?;
    Ok(Json(json!({})))
}
