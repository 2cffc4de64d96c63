//! The spec's server administration endpoints: whois, account locking and suspension.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::admin::users;
use crate::api::admin::parse_user_id;
use crate::error::{Error, Result};
use crate::http::extract::{self, Admin, Auth, Path};
use crate::storage::users::Flag;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/admin/whois/{user_id}"), get(whois))
        .route("/_matrix/client/v1/admin/lock/{user_id}", get(get_lock).put(set_lock))
        .route("/_matrix/client/v1/admin/suspend/{user_id}", get(get_suspend).put(set_suspend))
}

/// Users may look themselves up; admins anyone.
async fn whois(State(state): State<AppState>, Auth(me): Auth, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    if !me.is_admin && me.user_id != user_id {
        return Err(Error::forbidden("You are not a server admin"));
    }
    Ok(Json(crate::api::admin::whois_json(&state, &user_id).await?))
}

async fn get_lock(State(state): State<AppState>, Admin(_): Admin, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let user = users::spec_target(&state, &parse_user_id(&user_id)?).await?;
    Ok(Json(json!({ "locked": user.locked })))
}

#[derive(Deserialize)]
struct LockBody {
    locked: bool,
}

async fn set_lock(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<LockBody>,
) -> Result<Json<Value>> {
    users::moderate(&state, &parse_user_id(&user_id)?, Flag::Locked, body.locked).await?;
    Ok(Json(json!({ "locked": body.locked })))
}

async fn get_suspend(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user = users::spec_target(&state, &parse_user_id(&user_id)?).await?;
    Ok(Json(json!({ "suspended": user.suspended })))
}

#[derive(Deserialize)]
struct SuspendBody {
    suspended: bool,
}

async fn set_suspend(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<SuspendBody>,
) -> Result<Json<Value>> {
    users::moderate(&state, &parse_user_id(&user_id)?, Flag::Suspended, body.suspended).await?;
    Ok(Json(json!({ "suspended": body.suspended })))
}
