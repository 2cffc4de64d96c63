//! Profiles: display name and avatar URL.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
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
    match storage::users::get(&state.db, user.as_str()).await? {
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

#[derive(Deserialize)]
struct FieldBody {
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    avatar_url: Option<String>,
}

async fn set_field(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, field)): Path<(String, String)>,
    extract::Json(body): extract::Json<FieldBody>,
) -> Result<Json<Value>> {
    if user_id != me.user_id.as_str() {
        return Err(Error::forbidden("Cannot set another user's profile"));
    }
    let mut tx = state.db.begin().await?;
    match field.as_str() {
        "displayname" => {
            if body.displayname.as_ref().is_some_and(|n| n.len() > 256) {
                return Err(Error::bad_json("displayname is longer than 256 bytes"));
            }
            storage::users::set_displayname(&mut tx, me.user_id.as_str(), body.displayname.as_deref()).await?
        }
        "avatar_url" => {
            if body.avatar_url.as_ref().is_some_and(|u| !u.is_empty() && !u.starts_with("mxc://")) {
                return Err(Error::bad_json("avatar_url must be an mxc:// URI"));
            }
            storage::users::set_avatar_url(&mut tx, me.user_id.as_str(), body.avatar_url.as_deref()).await?
        }
        _ => return Err(Error::unrecognized()),
    }
    tx.commit().await?;
    Ok(Json(json!({})))
}
