//! Devices: list, get, rename, delete (with UIA), delete several.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::account::require_reauth;
use super::v3;
use crate::AppState;
use crate::e2ee::device_lists;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::storage::{self, devices::DeviceRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/devices"), get(list))
        .route(v3!("/devices/{device_id}"), get(get_one).put(rename).delete(delete_one))
        .route(v3!("/delete_devices"), post(delete_many))
}

/// A device as the spec shows it: fields the server does not know are left out, not null.
fn device_json(d: &DeviceRow) -> Value {
    let mut body = json!({ "device_id": d.device_id });
    if let Some(name) = &d.display_name {
        body["display_name"] = json!(name);
    }
    if let Some(ts) = d.last_seen_ts {
        body["last_seen_ts"] = json!(ts);
    }
    if let Some(ip) = &d.last_seen_ip {
        body["last_seen_ip"] = json!(ip);
    }
    body
}

async fn list(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let devices = storage::devices::list(&state.db, me.user_id.as_str()).await?;
    Ok(Json(json!({ "devices": devices.iter().map(device_json).collect::<Vec<_>>() })))
}

async fn get_one(State(state): State<AppState>, Auth(me): Auth, Path(device_id): Path<String>) -> Result<Json<Value>> {
    let device = storage::devices::get(&state.db, me.user_id.as_str(), &device_id)
        .await?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    Ok(Json(device_json(&device)))
}

#[derive(Deserialize)]
struct RenameBody {
    /// Absent: the name stays as it is.
    #[serde(default)]
    display_name: Option<String>,
}

async fn rename(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    extract::Json(body): extract::Json<RenameBody>,
) -> Result<Json<Value>> {
    let found = match body.display_name.as_deref() {
        Some(name) => {
            let mut tx = state.db.begin().await?;
            let found = storage::devices::rename(&mut tx, me.user_id.as_str(), &device_id, Some(name)).await?;
            if found {
                // The name is part of what other users (and servers) see of the device.
                storage::device_lists::record_change(&mut tx, me.user_id.as_str()).await?;
            }
            tx.commit().await?;
            if found {
                state.notifier.notify([me.user_id.as_ref()]);
                device_lists::devices_changed(&state, &me.user_id, std::slice::from_ref(&device_id)).await?;
            }
            found
        }
        None => storage::devices::get(&state.db, me.user_id.as_str(), &device_id).await?.is_some(),
    };
    if !found {
        return Err(Error::not_found("Device not found"));
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteBody {
    #[serde(default)]
    auth: Option<Value>,
}

async fn delete_one(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    extract::Json(body): extract::Json<DeleteBody>,
) -> Result<Json<Value>> {
    if storage::devices::get(&state.db, me.user_id.as_str(), &device_id).await?.is_none() {
        return Err(Error::not_found("Device not found"));
    }
    require_reauth(&state, &me, body.auth.as_ref()).await?;
    let mut tx = state.db.begin().await?;
    storage::devices::delete(&mut tx, me.user_id.as_str(), &device_id).await?;
    tx.commit().await?;
    state.token_cache.forget_user(&me.user_id);
    device_lists::devices_changed(&state, &me.user_id, &[device_id]).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteManyBody {
    devices: Vec<String>,
    #[serde(default)]
    auth: Option<Value>,
}

async fn delete_many(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<DeleteManyBody>,
) -> Result<Json<Value>> {
    require_reauth(&state, &me, body.auth.as_ref()).await?;
    let mut tx = state.db.begin().await?;
    for device_id in &body.devices {
        storage::devices::delete(&mut tx, me.user_id.as_str(), device_id).await?;
    }
    tx.commit().await?;
    state.token_cache.forget_user(&me.user_id);
    device_lists::devices_changed(&state, &me.user_id, &body.devices).await?;
    Ok(Json(json!({})))
}
