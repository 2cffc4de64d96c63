//! Profiles: display name and avatar URL.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde_json::{Map, Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::profile;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/profile/{user_id}"), get(profile))
        .route(v3!("/profile/{user_id}/{field}"), get(get_field).put(set_field))
}

fn parse_user(user_id: &str) -> Result<OwnedUserId> {
    OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))
}

async fn profile(State(state): State<AppState>, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let user_id = parse_user(&user_id)?;
    Ok(Json(Value::Object(profile::get(&state, &user_id, None).await?)))
}

async fn get_field(
    State(state): State<AppState>,
    Path((user_id, field)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = parse_user(&user_id)?;
    if !profile::FIELDS.contains(&field.as_str()) {
        return Err(Error::unrecognized());
    }
    let profile = profile::get(&state, &user_id, Some(&field)).await?;
    match profile.get(&field) {
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
    profile::set(&state, &me.user_id, &field, value).await?;
    Ok(Json(json!({})))
}
