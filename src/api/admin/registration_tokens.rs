//! Registration tokens: list, get, create, update, delete (`/v1/registration_tokens`).

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::admin_v1;
use crate::AppState;
use crate::accounts;
use crate::error::{Error, Result};
use crate::http::extract::{self, Admin, Path, Query};
use crate::storage::{self, now_ms, registration_tokens::RegistrationToken};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/registration_tokens"), get(list))
        .route(admin_v1!("/registration_tokens/new"), post(create))
        .route(admin_v1!("/registration_tokens/{token}"), get(get_one).put(update).delete(delete))
}

fn token_json(t: &RegistrationToken) -> Value {
    json!({
        "token": t.token,
        "uses_allowed": t.uses_allowed,
        "pending": t.pending,
        "completed": t.completed,
        "expiry_time": t.expiry_ts,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    valid: Option<bool>,
}

async fn list(State(state): State<AppState>, Admin(_): Admin, Query(q): Query<ListQuery>) -> Result<Json<Value>> {
    let tokens = storage::registration_tokens::list(&state.db).await?;
    let shown: Vec<Value> =
        tokens.iter().filter(|t| q.valid.is_none_or(|v| t.is_valid() == v)).map(token_json).collect();
    Ok(Json(json!({ "registration_tokens": shown })))
}

async fn get_one(State(state): State<AppState>, Admin(_): Admin, Path(token): Path<String>) -> Result<Json<Value>> {
    stored(&state, &token).await
}

async fn stored(state: &AppState, token: &str) -> Result<Json<Value>> {
    let token = storage::registration_tokens::get(&state.db, token)
        .await?
        .ok_or_else(|| Error::not_found("No such registration token"))?;
    Ok(Json(token_json(&token)))
}

/// A field that may be absent (unchanged), null (no limit) or set.
fn present<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct NewToken {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    length: Option<i64>,
    #[serde(default)]
    uses_allowed: Option<i64>,
    #[serde(default)]
    expiry_time: Option<i64>,
}

/// `uses_allowed` must be a non-negative integer, `expiry_time` in the future.
fn check_limits(uses_allowed: Option<i64>, expiry_time: Option<i64>) -> Result<()> {
    if uses_allowed.is_some_and(|n| n < 0) {
        return Err(Error::invalid_param("uses_allowed must be a non-negative integer or null"));
    }
    if expiry_time.is_some_and(|t| t < now_ms()) {
        return Err(Error::invalid_param("expiry_time must not be in the past"));
    }
    Ok(())
}

async fn create(
    State(state): State<AppState>,
    Admin(_): Admin,
    extract::Json(body): extract::Json<NewToken>,
) -> Result<Json<Value>> {
    check_limits(body.uses_allowed, body.expiry_time)?;
    let token = match (body.token, body.length) {
        (Some(token), _) => {
            accounts::validate_registration_token(&token)?;
            token
        }
        (None, Some(length)) if !(1..=64).contains(&length) => {
            return Err(Error::invalid_param("length must be an integer from 1 to 64"));
        }
        (None, length) => accounts::random_registration_token(length.unwrap_or(16) as usize),
    };
    let mut tx = state.db.begin().await?;
    let created = storage::registration_tokens::create(&mut tx, &token, body.uses_allowed, body.expiry_time).await?;
    tx.commit().await?;
    if !created {
        return Err(Error::invalid_param(format!("Token already exists: {token}")));
    }
    stored(&state, &token).await
}

#[derive(Deserialize)]
struct TokenChanges {
    #[serde(default, deserialize_with = "present")]
    uses_allowed: Option<Option<i64>>,
    #[serde(default, deserialize_with = "present")]
    expiry_time: Option<Option<i64>>,
}

async fn update(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(token): Path<String>,
    extract::Json(body): extract::Json<TokenChanges>,
) -> Result<Json<Value>> {
    check_limits(body.uses_allowed.flatten(), body.expiry_time.flatten())?;
    let mut tx = state.db.begin().await?;
    let found = storage::registration_tokens::update(&mut tx, &token, body.uses_allowed, body.expiry_time).await?;
    tx.commit().await?;
    if !found {
        return Err(Error::not_found("No such registration token"));
    }
    stored(&state, &token).await
}

async fn delete(State(state): State<AppState>, Admin(_): Admin, Path(token): Path<String>) -> Result<Json<Value>> {
    let mut tx = state.db.begin().await?;
    let found = storage::registration_tokens::delete(&mut tx, &token).await?;
    tx.commit().await?;
    if !found {
        return Err(Error::not_found("No such registration token"));
    }
    Ok(Json(json!({})))
}
