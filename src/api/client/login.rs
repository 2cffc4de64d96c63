//! Login and logout: `GET/POST /login`, `POST /refresh`, `POST /logout`, `/logout/all`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{OwnedUserId, UserId};
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

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/login"), get(login_flows).post(login))
        .route("/_matrix/client/v1/login/get_token", post(get_token))
        .route(v3!("/refresh"), post(refresh))
        .route(v3!("/logout"), post(logout))
        .route(v3!("/logout/all"), post(logout_all))
}

async fn login_flows(State(state): State<AppState>) -> Json<Value> {
    let mut flows = Vec::new();
    if state.config.password_login_enabled {
        flows.push(json!({ "type": "m.login.password" }));
    }
    let sso = super::sso::login_flow(&state);
    let has_sso = sso.is_some();
    flows.extend(sso);
    let get_token = state.config.login_via_existing_session;
    if has_sso || get_token {
        flows.push(json!({ "type": "m.login.token", "get_login_token": get_token }));
    }
    flows.push(json!({ "type": APPSERVICE_LOGIN }));
    Json(json!({ "flows": flows }))
}

#[derive(Deserialize)]
struct GetTokenBody {
    #[serde(default)]
    auth: Option<Value>,
}

/// A login token for another device of the same user (spec v1.7), after proving again who the
/// user is: UIA every time, as the spec requires, and the login rate limit.
async fn get_token(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Auth(me): Auth,
    extract::Json(body): extract::Json<GetTokenBody>,
) -> Result<Json<Value>> {
    if !state.config.login_via_existing_session {
        return Err(Error::unrecognized());
    }
    state.rate_limiter.check_address("login", ip).await?;
    super::account::require_reauth(&state, &me, body.auth.as_ref()).await?;
    let token = accounts::login_tokens::issue(&state.db, &me.user_id).await?;
    Ok(Json(json!({ "login_token": token, "expires_in_ms": accounts::login_tokens::LIFETIME_MS })))
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
    /// The login token of `m.login.token`.
    #[serde(default)]
    token: Option<String>,
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
    if body.kind != APPSERVICE_LOGIN {
        state.rate_limiter.check_address("login", ip).await?;
    }
    let user_id = match body.kind.as_str() {
        "m.login.password" if state.config.password_login_enabled => password_user(&state, &body).await?,
        APPSERVICE_LOGIN => appservice_user(&state, token.as_deref(), &body).await?,
        "m.login.token" => {
            let token = body.token.as_deref().ok_or_else(|| Error::missing_param("Missing token"))?;
            let user_id = accounts::login_tokens::redeem(&state.db, token).await?;
            ensure_active(&state, &user_id).await?;
            user_id
        }
        _ => return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unknown login type")),
    };
    let session = accounts::open_session(
        &state,
        &user_id,
        body.device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    Ok(Json(session_json(&session, &state)))
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

/// The user an `m.login.password` login proves to be.
async fn password_user(state: &AppState, body: &LoginBody) -> Result<OwnedUserId> {
    let user_id = login_user(state, body)?;
    let password = body.password.as_deref().ok_or_else(|| Error::missing_param("Missing password"))?;
    ensure_active(state, &user_id).await?;
    if !accounts::check_password(&state.db, &user_id, password).await? {
        return Err(Error::forbidden("Invalid username or password"));
    }
    Ok(user_id)
}

/// The user an `m.login.application_service` login names: the as_token proves the
/// appservice, which may log in the existing users of its namespace.
async fn appservice_user(state: &AppState, token: Option<&str>, body: &LoginBody) -> Result<OwnedUserId> {
    let user_id = login_user(state, body)?;
    let token = token.ok_or_else(Error::missing_token)?;
    let appservice = state.appservices.by_token(token).ok_or_else(|| Error::unknown_token(false))?;
    if !appservice.is_user(&user_id) {
        return Err(Error::forbidden("The user is not in the application service's namespace"));
    }
    if storage::users::get(&state.db, user_id.as_str()).await?.is_none_or(|u| u.deactivated) {
        return Err(Error::forbidden("Unknown user"));
    }
    Ok(user_id)
}

/// Refuses a login to a deactivated account.
async fn ensure_active(state: &AppState, user_id: &UserId) -> Result<()> {
    if let Some(row) = storage::users::get(&state.db, user_id.as_str()).await?
        && row.deactivated
    {
        return Err(Error::matrix(
            http::StatusCode::FORBIDDEN,
            "M_USER_DEACTIVATED",
            "This account has been deactivated",
        ));
    }
    Ok(())
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
    let session = accounts::refresh(&state, &body.refresh_token).await?;
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
    state.token_cache.forget_user(&me.user_id);
    device_lists::devices_changed(&state, &me.user_id, &[me.device_id]).await?;
    Ok(Json(json!({})))
}

async fn logout_all(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let devices: Vec<String> =
        storage::devices::list(&state.db, me.user_id.as_str()).await?.into_iter().map(|d| d.device_id).collect();
    let mut tx = state.db.begin().await?;
    storage::devices::delete_all(&mut tx, me.user_id.as_str(), None).await?;
    tx.commit().await?;
    state.token_cache.forget_user(&me.user_id);
    device_lists::devices_changed(&state, &me.user_id, &devices).await?;
    Ok(Json(json!({})))
}
