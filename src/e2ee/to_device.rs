//! Send-to-device messages: stored per recipient device until `/sync` acknowledges them.

use std::collections::BTreeMap;

use ruma::{OwnedUserId, ServerName, UserId};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};

use super::is_local;
use crate::accounts::Identity;
use crate::appservice;
use crate::error::{Error, Result};
use crate::storage::{self, Db, Tx, to_device};
use crate::{AppState, Services};

/// The device ID that addresses every device of a user.
const ALL_DEVICES: &str = "*";

/// Messages for users and their devices (`*`: every device of the user).
pub type Messages = BTreeMap<OwnedUserId, BTreeMap<String, Value>>;

/// Stores the messages of one `sendToDevice` request for our users, once per transaction ID
/// of the sending device, wakes them, and queues one `m.direct_to_device` EDU per other
/// server for its users.
pub async fn send(state: &AppState, me: &Identity, event_type: &str, txn_id: &str, messages: &Messages) -> Result<()> {
    if messages.values().flat_map(BTreeMap::values).any(|content| !content.is_object()) {
        return Err(Error::bad_json("Message contents must be JSON objects"));
    }
    let mut tx = state.db.begin().await?;
    if !to_device::add_txn(&mut tx, me.user_id.as_str(), &me.device_id, txn_id).await? {
        return Ok(());
    }
    let (recipients, appservices) = deliver_local(state, &mut tx, &me.user_id, event_type, messages).await?;
    tx.commit().await?;
    state.notifier.notify(recipients);
    appservices.wake(state);

    let mut by_server: BTreeMap<&ServerName, Map<String, Value>> = BTreeMap::new();
    for (user_id, devices) in messages.iter().filter(|(u, _)| !is_local(u, &state.config.server_name)) {
        by_server.entry(user_id.server_name()).or_default().insert(user_id.to_string(), json!(devices));
    }
    if by_server.is_empty() {
        return Ok(());
    }
    // The same for a retried request, which the transaction ID above stops anyway.
    let message_id = hex::encode(&Sha256::digest(format!("{}|{}|{txn_id}", me.user_id, me.device_id).as_bytes())[..16]);
    for (server, messages) in by_server {
        let content =
            json!({ "sender": me.user_id, "type": event_type, "message_id": message_id, "messages": messages });
        crate::federation::sender::send_edu(state, [server], "m.direct_to_device", content).await?;
    }
    Ok(())
}

/// Messages another server sent for our users (`m.direct_to_device`), stored once per
/// message ID of the sender.
pub async fn receive(
    svc: &Services,
    sender: &UserId,
    event_type: &str,
    message_id: &str,
    messages: &Messages,
) -> Result<()> {
    let mut tx = svc.db.begin().await?;
    // A remote sender has no device here: its message IDs are kept under an empty device ID.
    if !to_device::add_txn(&mut tx, sender.as_str(), "", message_id).await? {
        return Ok(());
    }
    let (recipients, appservices) = deliver_local(svc, &mut tx, sender, event_type, messages).await?;
    tx.commit().await?;
    svc.notifier.notify(recipients);
    appservices.wake(svc);
    Ok(())
}

/// Puts the messages for our users (others are skipped) into their devices' inboxes at a
/// new stream position, and queues them for the appservices that get their users' to-device
/// messages; returns the users who got one.
async fn deliver_local<'a>(
    svc: &Services,
    tx: &mut Tx,
    sender: &UserId,
    event_type: &str,
    messages: &'a Messages,
) -> Result<(Vec<&'a UserId>, appservice::Queued)> {
    let pos = storage::next_stream_pos(tx).await?;
    let mut recipients: Vec<&UserId> = Vec::new();
    let mut appservices = appservice::Queued::default();
    for (user_id, devices) in messages.iter().filter(|(u, _)| is_local(u, &svc.config.server_name)) {
        let mut delivered = 0;
        for (device_id, content) in devices.iter().filter(|(_, c)| c.is_object()) {
            let device = (device_id != ALL_DEVICES).then_some(device_id.as_str());
            appservices
                .extend(appservice::queue_to_device(svc, tx, sender, event_type, user_id, device, content).await?);
            let content = content.to_string();
            delivered +=
                to_device::deliver(tx, user_id.as_str(), device, pos, sender.as_str(), event_type, &content).await?;
        }
        if delivered > 0 {
            recipients.push(user_id);
        }
    }
    Ok((recipients, appservices))
}

/// Drops the device's messages up to `up_to`, which the client acknowledged (a sync token).
/// Most syncs have nothing to acknowledge: they are answered without a write, and mostly
/// without a read (see [`NoneWaiting`]).
pub async fn acknowledge(svc: &Services, me: &Identity, up_to: i64) -> Result<()> {
    if svc.to_device_none_waiting.known(me, up_to) {
        return Ok(());
    }
    let (user, device) = (me.user_id.as_str(), me.device_id.as_str());
    if to_device::any_up_to(&svc.db, user, device, up_to).await? {
        let mut tx = svc.db.begin().await?;
        to_device::delete_up_to(&mut tx, user, device, up_to).await?;
        tx.commit().await?;
    }
    svc.to_device_none_waiting.learn(me, up_to);
    Ok(())
}

/// Devices entries kept before starting again (each is a few dozen bytes).
const NONE_WAITING_LIMIT: usize = 100_000;

/// Per device, a stream position up to which no message waits for it. Such a fact stays
/// true (a new message takes a position after every committed one, and only acknowledgements
/// delete), in every process of the database, so it needs no invalidation: a sync learns it
/// when it acknowledged or found nothing up to its token's position, and the next sync from
/// that token skips the probe.
#[derive(Default)]
pub struct NoneWaiting(std::sync::Mutex<std::collections::HashMap<(OwnedUserId, String), i64>>);

impl NoneWaiting {
    /// Whether no message for the device is known to wait at a position up to `pos`.
    pub fn known(&self, me: &Identity, pos: i64) -> bool {
        let map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        map.get(&(me.user_id.clone(), me.device_id.clone())).is_some_and(|&known| pos <= known)
    }

    /// No message waits for the device at a position up to `pos`.
    pub fn learn(&self, me: &Identity, pos: i64) {
        let mut map = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= NONE_WAITING_LIMIT {
            map.clear();
        }
        let known = map.entry((me.user_id.clone(), me.device_id.clone())).or_insert(pos);
        *known = (*known).max(pos);
    }
}

/// The to-device events waiting for a device at stream positions in (`after`, `up_to`],
/// oldest first, at most `limit`, as `/sync` lists them in `to_device.events`; with the
/// position of the last one.
pub async fn pending_events(
    db: &Db,
    user_id: &str,
    device_id: &str,
    positions: (i64, i64),
    limit: i64,
) -> Result<(Vec<Value>, Option<i64>)> {
    let messages = to_device::pending(db, user_id, device_id, positions, limit).await?;
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
