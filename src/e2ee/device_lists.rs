//! Device-list changes of our users told to the servers that share a room with them
//! (`m.device_list_update`, `m.signing_key_update`), so that their users fetch the keys
//! again. Called after the change is committed.

use ruma::UserId;
use serde_json::{Value, json};

use crate::Services;
use crate::error::{Error, Result};
use crate::federation::sender;
use crate::rooms;
use crate::storage::{self, cross_signing, e2ee_keys};

/// Some devices of our `user` were added, renamed, got new keys or were deleted: one
/// `m.device_list_update` per device with its state now (`deleted` when gone). `stream_id`
/// is the user's last device-list change (what `/user/devices` answers as `stream_id`),
/// `prev_id` the one before: a server that missed it fetches the whole list.
pub async fn devices_changed(svc: &Services, user: &UserId, device_ids: &[String]) -> Result<()> {
    let servers = rooms::servers_sharing_rooms_with(svc, user).await?;
    if servers.is_empty() || device_ids.is_empty() {
        return Ok(());
    }
    let changes = storage::device_lists::last_changes(&svc.db, user.as_str(), 2).await?;
    let stream_id = changes.first().copied().unwrap_or(0);
    let prev_id: Vec<i64> = changes.get(1).copied().into_iter().collect();
    for device_id in device_ids {
        let mut content = json!({
            "user_id": user,
            "device_id": device_id,
            "stream_id": stream_id,
            "prev_id": prev_id,
        });
        match storage::devices::get(&svc.db, user.as_str(), device_id).await? {
            None => content["deleted"] = json!(true),
            Some(device) => {
                if let Some(name) = device.display_name {
                    content["device_display_name"] = json!(name);
                }
                if let Some(keys) = e2ee_keys::device_keys(svc.db.read(), user.as_str(), device_id).await? {
                    content["keys"] = serde_json::from_str::<Value>(&keys).map_err(|e| Error::Internal(e.into()))?;
                }
            }
        }
        sender::send_edu(svc, servers.iter().map(|s| &**s), "m.device_list_update", content).await?;
    }
    Ok(())
}

/// Our `user`'s cross-signing keys changed: `m.signing_key_update` with the master and
/// self-signing keys (the user-signing key is never shared).
pub async fn signing_keys_changed(svc: &Services, user: &UserId) -> Result<()> {
    let servers = rooms::servers_sharing_rooms_with(svc, user).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let mut content = json!({ "user_id": user });
    for key in cross_signing::keys(svc.db.read(), user.as_str()).await? {
        let field = match key.key_type.as_str() {
            "master" => "master_key",
            "self_signing" => "self_signing_key",
            _ => continue,
        };
        content[field] = serde_json::from_str::<Value>(&key.key_json).map_err(|e| Error::Internal(e.into()))?;
    }
    sender::send_edu(svc, servers.iter().map(|s| &**s), "m.signing_key_update", content).await
}
