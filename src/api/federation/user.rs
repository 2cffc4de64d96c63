//! Other servers asking for our users' devices and keys: `GET /user/devices/{userId}`,
//! `POST /user/keys/query` and `POST /user/keys/claim`. Only local users are answered; a
//! server sees the signatures a user made (not those other users made on their keys).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::FederationAuth;
use crate::AppState;
use crate::e2ee::keys;
use crate::error::{Error, Result};
use crate::http::extract::{self, Path};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/user/devices/{user_id}", get(devices))
        .route("/_matrix/federation/v1/user/keys/query", post(query))
        .route("/_matrix/federation/v1/user/keys/claim", post(claim))
}

fn is_local(state: &AppState, user_id: &UserId) -> bool {
    user_id.server_name().as_str() == state.config.server_name
}

/// Device keys, master keys and self-signing keys of local users, as `/keys/query` answers
/// them with the user as requester (so only the user's own signatures are included).
async fn local_keys(state: &AppState, wanted: BTreeMap<OwnedUserId, Vec<String>>) -> Result<[Map<String, Value>; 3]> {
    let mut answer: [Map<String, Value>; 3] = Default::default();
    for (user_id, devices) in wanted.into_iter().filter(|(u, _)| is_local(state, u)) {
        let user = user_id.clone();
        let mut one = keys::query_local(state, &user, &BTreeMap::from([(user_id, devices)])).await?;
        for (field, merged) in ["device_keys", "master_keys", "self_signing_keys"].iter().zip(answer.iter_mut()) {
            if let Some(Value::Object(by_user)) = one.remove(*field) {
                merged.extend(by_user);
            }
        }
    }
    Ok(answer)
}

#[derive(Deserialize)]
struct QueryBody {
    device_keys: BTreeMap<OwnedUserId, Vec<String>>,
}

async fn query(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    extract::Json(body): extract::Json<QueryBody>,
) -> Result<Json<Value>> {
    let [device_keys, master_keys, self_signing_keys] = local_keys(&state, body.device_keys).await?;
    Ok(Json(json!({
        "device_keys": device_keys,
        "master_keys": master_keys,
        "self_signing_keys": self_signing_keys,
    })))
}

#[derive(Deserialize)]
struct ClaimBody {
    one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
}

async fn claim(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    extract::Json(body): extract::Json<ClaimBody>,
) -> Result<Json<Value>> {
    let wanted = body.one_time_keys.into_iter().filter(|(u, _)| is_local(&state, u)).collect();
    let one_time_keys = keys::claim_local(&state, &wanted).await?;
    Ok(Json(json!({ "one_time_keys": one_time_keys })))
}

async fn devices(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user ID"))?;
    if !is_local(&state, &user_id) {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    let stream_id = storage::device_lists::last_change(&state.db, user_id.as_str()).await?.unwrap_or(0);
    let [device_keys, mut master_keys, mut self_signing_keys] =
        local_keys(&state, BTreeMap::from([(user_id.clone(), Vec::new())])).await?;
    let devices: Vec<Value> = match device_keys.get(user_id.as_str()) {
        Some(Value::Object(by_device)) => by_device
            .iter()
            .map(|(device_id, keys)| {
                let mut keys = keys.clone();
                let unsigned = keys.as_object_mut().and_then(|k| k.remove("unsigned"));
                let mut device = json!({ "device_id": device_id, "keys": keys });
                if let Some(name) = unsigned.as_ref().and_then(|u| u.get("device_display_name")) {
                    device["device_display_name"] = name.clone();
                }
                device
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut answer = json!({ "user_id": user_id, "stream_id": stream_id, "devices": devices });
    if let Some(master) = master_keys.remove(user_id.as_str()) {
        answer["master_key"] = master;
    }
    if let Some(self_signing) = self_signing_keys.remove(user_id.as_str()) {
        answer["self_signing_key"] = self_signing;
    }
    Ok(Json(answer))
}
