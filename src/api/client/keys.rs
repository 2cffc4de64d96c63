//! End-to-end encryption keys: upload, query, claim, cross-signing keys and signatures.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::account::require_reauth;
use super::v3;
use crate::AppState;
use crate::e2ee::{cross_signing, keys, remote};
use crate::error::Result;
use crate::http::extract::{self, Auth, Query};
use crate::sync::token::SyncToken;

/// The longest a client may have other servers waited for.
const MAX_REMOTE_TIMEOUT: Duration = Duration::from_secs(60);

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/keys/upload"), post(upload))
        .route(v3!("/keys/query"), post(query))
        .route(v3!("/keys/claim"), post(claim))
        .route(v3!("/keys/device_signing/upload"), post(upload_signing_keys))
        .route(v3!("/keys/signatures/upload"), post(upload_signatures))
        .route(v3!("/keys/changes"), get(changes))
}

#[derive(Deserialize)]
struct ChangesQuery {
    from: String,
    to: String,
}

/// Users whose device lists changed between two sync tokens (and those no longer sharing a room).
async fn changes(State(state): State<AppState>, Auth(me): Auth, Query(q): Query<ChangesQuery>) -> Result<Json<Value>> {
    let from = SyncToken::parse(&q.from)?.stream;
    let to = SyncToken::parse(&q.to)?.stream;
    let (changed, left) = crate::sync::v2::device_list_changes(&state, &me.user_id, from, to.max(from)).await?;
    Ok(Json(json!({ "changed": changed, "left": left })))
}

async fn upload(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<keys::Upload>,
) -> Result<Json<Value>> {
    let counts = keys::upload(&state, &me, body).await?;
    Ok(Json(json!({ "one_time_key_counts": counts })))
}

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<OwnedUserId, Vec<String>>,
    /// Milliseconds to wait for other servers.
    timeout: Option<u64>,
}

/// How long other servers are waited for: the client's `timeout`, at most a minute.
fn remote_timeout(timeout_ms: Option<u64>) -> Duration {
    timeout_ms.map_or(remote::DEFAULT_TIMEOUT, |ms| Duration::from_millis(ms).min(MAX_REMOTE_TIMEOUT))
}

async fn query(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<QueryBody>,
) -> Result<Json<Value>> {
    let timeout = remote_timeout(body.timeout);
    Ok(Json(Value::Object(keys::query(&state, &me.user_id, body.device_keys, timeout).await?)))
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    timeout: Option<u64>,
}

async fn claim(
    State(state): State<AppState>,
    Auth(_): Auth,
    extract::Json(body): extract::Json<ClaimBody>,
) -> Result<Json<Value>> {
    let timeout = remote_timeout(body.timeout);
    Ok(Json(Value::Object(keys::claim(&state, body.one_time_keys, timeout).await?)))
}

#[derive(Deserialize)]
struct SigningKeysBody {
    #[serde(flatten)]
    keys: cross_signing::SigningKeys,
    #[serde(default)]
    auth: Option<Value>,
}

async fn upload_signing_keys(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<SigningKeysBody>,
) -> Result<Json<Value>> {
    if cross_signing::upload_needs_auth(&state, &me, &body.keys).await? {
        require_reauth(&state, &me, body.auth.as_ref()).await?;
    }
    cross_signing::upload(&state, &me, body.keys).await?;
    Ok(Json(json!({})))
}

async fn upload_signatures(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<BTreeMap<OwnedUserId, BTreeMap<String, Value>>>,
) -> Result<Json<Value>> {
    let failures = cross_signing::upload_signatures(&state, &me, &body).await?;
    Ok(Json(json!({ "failures": failures })))
}
