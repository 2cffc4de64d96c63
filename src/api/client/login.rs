//! Login and logout: `GET/POST /login`, `POST /refresh`, `POST /logout`, `/logout/all`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::register::APPSERVICE_LOGIN;
use super::v3;
use crate::AppState;
use crate::accounts::{self, Session};
use crate::e2ee::device_lists;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, ClientIp, Token};
use crate::storage;
use ruma::{OwnedUserId, UserId};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/login"), get(login_flows).post(login))
        .route(v3!("/refresh"), post(refresh))
        .route(v3!("/logout"), post(logout))
        .route(v3!("/logout/all"), post(logout_all))
}

async fn login_flows() -> Json<Value> {
    Json(json!({ "flows": [{ "type": "m.login.password" }, { "type": APPSERVICE_LOGIN }] }))
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    identifier: Option<Identifier>,
    /// Deprecated top-level user field.
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    initial_device_display_name: Option<String>,
    #[serde(default)]
    refresh_token: bool,
}

#[derive(Deserialize)]
struct Identifier {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    user: Option<String>,
}

async fn login(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Token(token): Token,
    extract::Json(body): extract::Json<LoginBody>,
) -> Result<Json<Value>> {
    let by_appservice = body.kind == APPSERVICE_LOGIN;
    if !by_appservice {
        state.rate_limiter.check("login", ip)?;
    }
    if body.kind != "m.login.password" && !by_appservice {
        return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown login type"));
    }
    let user = login_user(&state, &body)?;
    if by_appservice {
        // The as_token proves the appservice; it may log in the users of its namespace.
        let token = token.ok_or_else(Error::missing_token)?;
        let appservice = state.appservices.by_token(&token).ok_or_else(|| Error::unknown_token(false))?;
        if !appservice.is_user(&user) {
            return Err(Error::forbidden("The user is not in the application service's namespace"));
        }
        if storage::users::get(&state.db, user.as_str()).await?.is_none_or(|u| u.deactivated) {
            return Err(Error::forbidden("Unknown user"));
        }
        return open_session(&state, &user, body).await;
    }
    if let Some(row) = storage::users::get(&state.db, user.as_str()).await?
        && row.deactivated
    {
        return Err(Error::matrix(
            http::StatusCode::FORBIDDEN,
            "M_USER_DEACTIVATED",
            "This account has been deactivated",
        ));
    }
    let password = body.password.as_deref().ok_or_else(|| Error::missing_param("Missing password"))?;
    if !accounts::check_password(&state.db, &user, password).await? {
        return Err(Error::forbidden("Invalid username or password"));
    }
    open_session(&state, &user, body).await
}

/// The user a login names (identifier `m.id.user`, or the deprecated `user`), of this server.
fn login_user(state: &AppState, body: &LoginBody) -> Result<OwnedUserId> {
    let user = match &body.identifier {
        Some(id) if id.kind == "m.id.user" => id.user.clone(),
        Some(id) => {
            return Err(Error::matrix(
                http::StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                format!("Unsupported identifier type {}", id.kind),
            ));
        }
        None => body.user.clone(),
    };
    let user = user.ok_or_else(|| Error::missing_param("Missing user identifier"))?;
    let invalid = || Error::forbidden("Invalid username or password");
    let user_id = accounts::parse_login_user(&user, &state.config.server_name).ok_or_else(invalid)?;
    if user_id.server_name() != state.config.server_name.as_str() {
        return Err(invalid());
    }
    Ok(user_id)
}

async fn open_session(state: &AppState, user_id: &UserId, body: LoginBody) -> Result<Json<Value>> {
    let session = accounts::open_session(
        &state.db,
        user_id,
        body.device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    Ok(Json(session_json(&session, state)))
}

/// The body of a login or registration answer.
pub fn session_json(session: &Session, state: &AppState) -> Value {
    let mut body = json!({
        "user_id": session.user_id,
        "access_token": session.access_token,
        "device_id": session.device_id,
        "home_server": state.config.server_name,
        "well_known": { "m.homeserver": { "base_url": state.config.base_url() } },
    });
    if let Some(rt) = &session.refresh_token {
        body["refresh_token"] = json!(rt);
    }
    if let Some(ms) = session.expires_in_ms {
        body["expires_in_ms"] = json!(ms);
    }
    body
}

#[derive(Deserialize)]
struct RefreshBody {
    refresh_token: String,
}

async fn refresh(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<RefreshBody>,
) -> Result<Json<Value>> {
    let session = accounts::refresh(&state.db, &state.sessions, &body.refresh_token).await?;
    Ok(Json(json!({
        "access_token": session.access_token,
        "refresh_token": session.refresh_token,
        "expires_in_ms": session.expires_in_ms,
    })))
}

async fn logout(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let mut tx = state.db.begin().await?;
    storage::devices::delete(&mut tx, me.user_id.as_str(), &me.device_id).await?;
    tx.commit().await?;
    device_lists::devices_changed(&state, &me.user_id, &[me.device_id]).await?;
    Ok(Json(json!({})))
}

async fn logout_all(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let devices: Vec<String> =
        storage::devices::list(&state.db, me.user_id.as_str()).await?.into_iter().map(|d| d.device_id).collect();
    let mut tx = state.db.begin().await?;
    storage::devices::delete_all(&mut tx, me.user_id.as_str(), None).await?;
    tx.commit().await?;
    device_lists::devices_changed(&state, &me.user_id, &devices).await?;
    Ok(Json(json!({})))
}
