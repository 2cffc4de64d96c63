//! Account management: `whoami`, password change, deactivation, third-party IDs.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::{self, uia};
use crate::error::Result;
use crate::http::extract::{self, Auth};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/account/whoami"), get(whoami))
        .route(v3!("/account/password"), post(change_password))
        .route(v3!("/account/deactivate"), post(deactivate))
        .route(v3!("/account/3pid"), get(third_party_ids))
}

async fn whoami(Auth(me): Auth) -> Json<Value> {
    let mut body = json!({ "user_id": me.user_id, "is_guest": me.is_guest });
    // An appservice acting without a device has none to name.
    if !me.device_id.is_empty() {
        body["device_id"] = json!(me.device_id);
    }
    Json(body)
}

#[derive(Deserialize)]
struct PasswordBody {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
    #[serde(default)]
    auth: Option<Value>,
}

fn yes() -> bool {
    true
}

/// UIA proving again who the authenticated user is: by password, or by single sign-on at a
/// provider they are linked to (the only way for accounts SSO created, which have no password).
pub async fn require_reauth(state: &AppState, me: &accounts::Identity, auth: Option<&Value>) -> Result<()> {
    let has_password =
        storage::users::get(&state.db, me.user_id.as_str()).await?.is_some_and(|u| u.password_hash.is_some());
    let has_sso = !crate::sso::linked_providers(state, &me.user_id).await?.is_empty();
    let mut flows: Vec<&[&str]> = Vec::new();
    if has_password || !has_sso {
        flows.push(&[uia::PASSWORD]);
    }
    if has_sso {
        flows.push(&[uia::SSO]);
    }
    let req = uia::Requirement { flows: &flows, user: Some(&me.user_id) };
    state.uia.check(&state.db, auth, req).await.map(|_| ())
}

async fn change_password(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<PasswordBody>,
) -> Result<Json<Value>> {
    require_reauth(&state, &me, body.auth.as_ref()).await?;
    let keep = body.logout_devices.then_some(me.device_id.as_str());
    accounts::change_password(&state, &me.user_id, &body.new_password, keep).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeactivateBody {
    #[serde(default)]
    auth: Option<Value>,
    #[serde(default)]
    erase: bool,
}

async fn deactivate(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<DeactivateBody>,
) -> Result<Json<Value>> {
    require_reauth(&state, &me, body.auth.as_ref()).await?;
    accounts::deactivate(&state, &me.user_id, body.erase).await?;
    tracing::info!(user_id = %me.user_id, "deactivated");
    Ok(Json(json!({ "id_server_unbind_result": "no-support" })))
}

/// Plexus binds no third-party identifiers (e-mail, phone): the list is always empty.
async fn third_party_ids(Auth(_): Auth) -> Json<Value> {
    Json(json!({ "threepids": [] }))
}
