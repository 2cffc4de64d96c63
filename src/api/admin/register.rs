//! Shared-secret registration: `GET|POST /_synapse/admin/v1/register`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin_v1;
use crate::AppState;
use crate::admin::register;
use crate::error::Result;
use crate::http::extract;

pub fn router() -> Router<AppState> {
    Router::new().route(admin_v1!("/register"), get(nonce).post(register_user))
}

async fn nonce(State(state): State<AppState>) -> Result<Json<Value>> {
    Ok(Json(json!({ "nonce": register::new_nonce(&state).await? })))
}

#[derive(Deserialize)]
struct RegisterBody {
    nonce: String,
    username: String,
    password: String,
    #[serde(default)]
    displayname: Option<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default)]
    user_type: Option<String>,
    mac: String,
}

async fn register_user(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<RegisterBody>,
) -> Result<Json<Value>> {
    let session = register::register(
        &state,
        register::Request {
            nonce: &body.nonce,
            username: &body.username,
            password: &body.password,
            displayname: body.displayname.as_deref(),
            admin: body.admin,
            user_type: body.user_type.as_deref(),
            mac: &body.mac,
        },
    )
    .await?;
    Ok(Json(json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.config.server_name,
    })))
}
