//! Send-to-device messages: stored per recipient device until `/sync` acknowledges them.

use std::collections::BTreeMap;

use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::is_local;
use crate::AppState;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::storage::{self, Db, to_device};

/// The device ID that addresses every device of a user.
const ALL_DEVICES: &str = "*";

/// Stores the messages of one `sendToDevice` request, once per transaction ID of the sending
/// device, and wakes the recipients.
pub async fn send(
    state: &AppState,
    me: &Identity,
    event_type: &str,
    txn_id: &str,
    messages: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
) -> Result<()> {
    if messages.values().flat_map(BTreeMap::values).any(|content| !content.is_object()) {
        return Err(Error::bad_json("Message contents must be JSON objects"));
    }
    let mut tx = state.db.begin().await?;
    if !to_device::add_txn(&mut tx, me.user_id.as_str(), &me.device_id, txn_id).await? {
        return Ok(());
    }
    let pos = storage::next_stream_pos(&mut tx).await?;
    let mut recipients: Vec<&UserId> = Vec::new();
    for (user_id, devices) in messages {
        if !is_local(user_id, &state.config.server_name) {
            // Federation does not exist yet: nothing can carry the message there.
            tracing::warn!(%user_id, "to-device message for a remote user dropped (no federation yet)");
            continue;
        }
        let mut delivered = 0;
        for (device_id, content) in devices {
            let device = (device_id != ALL_DEVICES).then_some(device_id.as_str());
            let content = content.to_string();
            delivered +=
                to_device::deliver(&mut tx, user_id.as_str(), device, pos, me.user_id.as_str(), event_type, &content)
                    .await?;
        }
        if delivered > 0 {
            recipients.push(user_id);
        }
    }
    tx.commit().await?;
    state.notifier.notify(recipients);
    Ok(())
}

/// The to-device events waiting for a device up to stream position `up_to`, oldest first, at
/// most `limit`, as `/sync` lists them in `to_device.events`; with the position of the last one.
pub async fn pending_events(
    db: &Db,
    user_id: &str,
    device_id: &str,
    up_to: i64,
    limit: i64,
) -> Result<(Vec<Value>, Option<i64>)> {
    let messages = to_device::pending(db, user_id, device_id, up_to, limit).await?;
    let last = messages.last().map(|m| m.stream_pos);
    let events = messages
        .into_iter()
        .map(|m| {
            let content: Map<String, Value> =
                serde_json::from_str(&m.content).map_err(|e| Error::Internal(e.into()))?;
            Ok(json!({ "sender": m.sender, "type": m.event_type, "content": content }))
        })
        .collect::<Result<_>>()?;
    Ok((events, last))
}
