//! Registration: `POST /register` (UIA), `GET /register/available`, token validity.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::{self, uia};
use crate::config::RegistrationMode;
use crate::error::{Error, Result};
use crate::http::extract::{self, ClientIp, Query, Token};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/register"), post(register))
        .route(v3!("/register/available"), get(available))
        .route("/_matrix/client/v1/register/m.login.registration_token/validity", get(token_validity))
}

#[derive(Deserialize)]
struct RegisterQuery {
    #[serde(default)]
    kind: Option<String>,
}

#[derive(Deserialize)]
struct RegisterBody {
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    initial_device_display_name: Option<String>,
    #[serde(default)]
    inhibit_login: bool,
    #[serde(default)]
    refresh_token: bool,
    #[serde(default)]
    auth: Option<Value>,
    /// `m.login.application_service` for an appservice registering a user of its namespace.
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl RegisterBody {
    fn by_appservice(&self) -> bool {
        let auth_type = self.auth.as_ref().and_then(|a| a.get("type")).and_then(Value::as_str);
        self.kind.as_deref().or(auth_type) == Some(APPSERVICE_LOGIN)
    }
}

/// The registration and login type of appservices.
pub const APPSERVICE_LOGIN: &str = "m.login.application_service";

async fn register(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Token(token): Token,
    Query(query): Query<RegisterQuery>,
    extract::Json(body): extract::Json<RegisterBody>,
) -> Result<Json<Value>> {
    if body.by_appservice() {
        return register_by_appservice(&state, token, body).await;
    }
    state.rate_limiter.check_address("register", ip).await?;
    let server_name = &state.config.server_name;
    let guest = match query.kind.as_deref() {
        None | Some("user") => false,
        Some("guest") => true,
        Some(other) => return Err(Error::invalid_param(format!("Unknown kind {other}"))),
    };
    if guest && !state.config.registration.allow_guests {
        return Err(Error::forbidden("Guest access is disabled"));
    }
    let flows: &[&[&str]] = match state.config.registration.mode {
        RegistrationMode::Closed if !guest => return Err(Error::forbidden("Registration has been disabled")),
        RegistrationMode::Token if !guest => &[&[uia::REGISTRATION_TOKEN]],
        _ => &[&[uia::DUMMY]],
    };
    let user_id = match body.username.as_deref().filter(|u| !u.is_empty() && !guest) {
        Some(name) => accounts::validate_new_localpart(name, server_name)?,
        None => generated_user_id(&state).await?,
    };
    state.appservices.check_user_free(&user_id, None)?;
    if storage::users::exists(&state.db, user_id.as_str()).await? {
        return Err(Error::user_in_use());
    }
    if !guest && body.password.is_none() {
        return Err(Error::missing_param("Missing password"));
    }
    let completed = if guest {
        uia::Completed::default()
    } else {
        state.uia.check(&state.db, body.auth.as_ref(), uia::Requirement { flows, user: None }).await?
    };
    accounts::create_account(
        &state.db,
        &user_id,
        body.password.as_deref(),
        false,
        guest,
        completed.registration_token.as_deref(),
    )
    .await?;
    tracing::info!(%user_id, guest, "registered");
    login_unless_inhibited(&state, &user_id, body).await
}

/// Registration with an appservice's as_token, of a user in its namespace: no
/// user-interactive authentication, no password, no rate limit.
async fn register_by_appservice(state: &AppState, token: Option<String>, body: RegisterBody) -> Result<Json<Value>> {
    let token = token.ok_or_else(Error::missing_token)?;
    let appservice = state.appservices.by_token(&token).ok_or_else(|| Error::unknown_token(false))?;
    let username = body.username.as_deref().ok_or_else(|| Error::missing_param("Missing username"))?;
    let user_id = accounts::validate_new_localpart(username, &state.config.server_name)?;
    if !appservice.is_user(&user_id) {
        return Err(Error::matrix(
            http::StatusCode::BAD_REQUEST,
            "M_EXCLUSIVE",
            "This user ID is not in the application service's namespace",
        ));
    }
    state.appservices.check_user_free(&user_id, Some(appservice))?;
    accounts::create_account(&state.db, &user_id, None, false, false, None).await?;
    tracing::info!(%user_id, appservice = %appservice.id, "registered by an appservice");
    login_unless_inhibited(state, &user_id, body).await
}

/// The answer to a registration: a new session unless the client asked for none.
async fn login_unless_inhibited(state: &AppState, user_id: &ruma::UserId, body: RegisterBody) -> Result<Json<Value>> {
    if body.inhibit_login {
        return Ok(Json(json!({ "user_id": user_id })));
    }
    let session = accounts::open_session(
        state,
        user_id,
        body.device_id,
        body.initial_device_display_name.as_deref(),
        body.refresh_token,
    )
    .await?;
    Ok(Json(super::login::session_json(&session, state)))
}

/// A free numeric user ID, for registrations without a username (guests).
async fn generated_user_id(state: &AppState) -> Result<ruma::OwnedUserId> {
    use rand::Rng;
    loop {
        let n: u64 = rand::thread_rng().gen_range(100_000_000..1_000_000_000);
        let user_id = accounts::validate_new_localpart(&n.to_string(), &state.config.server_name)?;
        if !storage::users::exists(&state.db, user_id.as_str()).await? {
            return Ok(user_id);
        }
    }
}

#[derive(Deserialize)]
struct AvailableQuery {
    username: String,
}

async fn available(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Query(query): Query<AvailableQuery>,
) -> Result<Json<Value>> {
    state.rate_limiter.check_address("register", ip).await?;
    let user_id = accounts::validate_new_localpart(&query.username, &state.config.server_name)?;
    state.appservices.check_user_free(&user_id, None)?;
    if storage::users::exists(&state.db, user_id.as_str()).await? {
        return Err(Error::user_in_use());
    }
    Ok(Json(json!({ "available": true })))
}

#[derive(Deserialize)]
struct TokenQuery {
    token: String,
}

async fn token_validity(
    State(state): State<AppState>,
    ClientIp(ip): ClientIp,
    Query(query): Query<TokenQuery>,
) -> Result<Json<Value>> {
    state.rate_limiter.check_address("register", ip).await?;
    if state.config.registration.mode != RegistrationMode::Token {
        return Err(Error::forbidden("Registration tokens are not in use"));
    }
    let valid = storage::registration_tokens::get(&state.db, &query.token).await?.is_some_and(|t| t.is_valid());
    Ok(Json(json!({ "valid": valid })))
}
