//! Dehydrated devices (MSC3814): a client leaves an encrypted device with the server so
//! that keys sent while the user has no other device are not lost. The device is a normal
//! device with keys (others encrypt to it) but no access token; a later login fetches its
//! to-device messages. At most one per user: a new one replaces the old.

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{device_lists, keys};
use crate::AppState;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::storage;

/// To-device messages per `/events` batch.
const BATCH: i64 = 100;

/// The body of `PUT /dehydrated_device`.
#[derive(Deserialize)]
pub struct NewDevice {
    pub device_id: String,
    pub device_data: Map<String, Value>,
    #[serde(default)]
    pub initial_device_display_name: Option<String>,
    #[serde(flatten)]
    pub keys: keys::Upload,
}

/// Stores a new dehydrated device with its keys, replacing the user's previous one.
pub async fn put(state: &AppState, me: &Identity, new: NewDevice) -> Result<String> {
    let user = me.user_id.as_str();
    if new.device_id.is_empty() || new.device_id.len() > 255 {
        return Err(Error::invalid_param("Invalid device_id"));
    }
    let previous = storage::dehydrated_devices::get(&state.db, user).await?.map(|(id, _)| id);
    let taken = storage::devices::get(&state.db, user, &new.device_id).await?.is_some();
    if taken && previous.as_deref() != Some(new.device_id.as_str()) {
        return Err(Error::invalid_param("A device with this ID exists already"));
    }
    let data = serde_json::to_string(&new.device_data).map_err(|e| Error::Internal(e.into()))?;
    let mut tx = state.db.begin().await?;
    if let Some(previous) = previous.as_deref().filter(|p| *p != new.device_id) {
        storage::devices::delete(&mut tx, user, previous).await?;
    }
    storage::devices::upsert(&mut tx, user, &new.device_id, new.initial_device_display_name.as_deref()).await?;
    storage::dehydrated_devices::set(&mut tx, user, &new.device_id, &data).await?;
    tx.commit().await?;
    state.token_cache.forget_user(&me.user_id);
    let device = Identity { device_id: new.device_id.clone(), ..me.clone() };
    keys::upload(state, &device, new.keys).await?;
    let changed: Vec<String> = previous.into_iter().chain([new.device_id.clone()]).collect();
    device_lists::devices_changed(state, &me.user_id, &changed).await?;
    Ok(new.device_id)
}

/// The user's dehydrated device: `{device_id, device_data}`.
pub async fn get(state: &AppState, me: &Identity) -> Result<Value> {
    let (device_id, data) = storage::dehydrated_devices::get(&state.db, me.user_id.as_str())
        .await?
        .ok_or_else(|| Error::not_found("No dehydrated device"))?;
    let data: Value = serde_json::from_str(&data).map_err(|e| Error::Internal(e.into()))?;
    Ok(json!({ "device_id": device_id, "device_data": data }))
}

/// Deletes the user's dehydrated device; its ID.
pub async fn delete(state: &AppState, me: &Identity) -> Result<String> {
    let user = me.user_id.as_str();
    let (device_id, _) = storage::dehydrated_devices::get(&state.db, user)
        .await?
        .ok_or_else(|| Error::not_found("No dehydrated device"))?;
    let mut tx = state.db.begin().await?;
    storage::devices::delete(&mut tx, user, &device_id).await?;
    tx.commit().await?;
    state.token_cache.forget_user(&me.user_id);
    device_lists::devices_changed(state, &me.user_id, std::slice::from_ref(&device_id)).await?;
    Ok(device_id)
}

/// A batch of the dehydrated device's to-device messages after `next_batch`. Batches are
/// not acknowledged: an interrupted rehydration can start again. The last batch is empty.
pub async fn events(state: &AppState, me: &Identity, device_id: &str, next_batch: Option<&str>) -> Result<Value> {
    let user = me.user_id.as_str();
    match storage::dehydrated_devices::get(&state.db, user).await? {
        Some((dehydrated, _)) if dehydrated == device_id => {}
        _ => return Err(Error::forbidden("Not the dehydrated device")),
    }
    let after = match next_batch {
        None => i64::MIN,
        Some(token) => token.parse().map_err(|_| Error::invalid_param(format!("Invalid next_batch {token:?}")))?,
    };
    let up_to = storage::current_stream_pos(&state.db).await?;
    let (events, last) = super::to_device::pending_events(&state.db, user, device_id, (after, up_to), BATCH).await?;
    let next = last.unwrap_or(after.max(0));
    Ok(json!({ "events": events, "next_batch": next.to_string() }))
}
