//! EDUs received from other servers (in `PUT /send/{txnId}`): typing, receipts, presence,
//! device list and signing key updates, direct to-device messages. A server speaks only for
//! its own users, and in a room only when the room's server ACL lets it.

use std::collections::BTreeMap;

use ruma::{EventId, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, ServerName, UserId};
use serde::Deserialize;
use serde_json::Value;

use crate::AppState;
use crate::Services;
use crate::e2ee::to_device;
use crate::error::{Error, Result};
use crate::rooms::{self, receipts, typing};
use crate::storage;

/// Applies one EDU sent by `origin`. EDUs of unknown types are ignored, as the spec says.
pub async fn receive(state: &AppState, origin: &ServerName, edu_type: &str, content: &Value) -> Result<()> {
    match edu_type {
        "m.typing" => typing_edu(state, origin, parse(content)?).await,
        "m.receipt" => receipt_edu(state, origin, parse(content)?).await,
        "m.direct_to_device" => to_device_edu(state, origin, parse(content)?).await,
        "m.device_list_update" | "m.signing_key_update" => {
            device_list_edu(state, origin, parse::<UserOnly>(content)?.user_id).await
        }
        "m.presence" => presence_edu(state, origin, parse(content)?).await,
        _ => {
            tracing::debug!(edu_type, "EDU of an unknown type ignored");
            Ok(())
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(content: &Value) -> Result<T> {
    T::deserialize(content).map_err(|e| Error::bad_json(format!("Invalid EDU content: {e}")))
}

/// 403 unless `user` belongs to `origin`.
fn require_user_of(origin: &ServerName, user: &UserId) -> Result<()> {
    if user.server_name() != origin {
        return Err(Error::forbidden(format!("{origin} cannot speak for {user}")));
    }
    Ok(())
}

/// 403 unless `user` (of `origin`) is joined to the room and the room's ACL allows `origin`.
async fn require_joined(svc: &Services, origin: &ServerName, room_id: &RoomId, user: &UserId) -> Result<()> {
    require_user_of(origin, user)?;
    if !rooms::server_allowed(svc, room_id, origin).await? {
        return Err(Error::forbidden(format!("{origin} is denied by the server ACL of {room_id}")));
    }
    match storage::rooms::membership(&svc.db, room_id.as_str(), user.as_str()).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(Error::forbidden(format!("{user} is not joined to {room_id}"))),
    }
}

#[derive(Deserialize)]
struct TypingContent {
    room_id: OwnedRoomId,
    user_id: OwnedUserId,
    typing: bool,
}

async fn typing_edu(state: &AppState, origin: &ServerName, edu: TypingContent) -> Result<()> {
    require_joined(state, origin, &edu.room_id, &edu.user_id).await?;
    typing::set(state, &edu.room_id, &edu.user_id, edu.typing, typing::FEDERATION_TIMEOUT).await
}

/// `{room_id: {receipt_type: {user_id: {event_ids, data: {ts, thread_id?}}}}}`.
type ReceiptContent = BTreeMap<OwnedRoomId, BTreeMap<String, BTreeMap<OwnedUserId, UserReceipt>>>;

#[derive(Deserialize)]
struct UserReceipt {
    event_ids: Vec<OwnedEventId>,
    #[serde(default)]
    data: ReceiptData,
}

#[derive(Deserialize, Default)]
struct ReceiptData {
    #[serde(default)]
    ts: Option<i64>,
    #[serde(default)]
    thread_id: Option<String>,
}

async fn receipt_edu(state: &AppState, origin: &ServerName, content: ReceiptContent) -> Result<()> {
    for (room_id, by_type) in content {
        if !rooms::server_allowed(state, &room_id, origin).await? {
            tracing::info!(%origin, %room_id, "receipts of a server denied by the room's ACL ignored");
            continue;
        }
        // Only public read receipts travel between servers.
        for (user_id, receipt) in by_type.get(receipts::READ).into_iter().flatten() {
            if let Err(e) = require_joined(state, origin, &room_id, user_id).await {
                tracing::info!(%origin, %user_id, %room_id, error = %e, "receipt ignored");
                continue;
            }
            for event_id in &receipt.event_ids {
                if !in_room(state, &room_id, event_id).await? {
                    continue;
                }
                let ts = receipt.data.ts.unwrap_or_else(storage::now_ms);
                let thread = receipt.data.thread_id.as_deref();
                receipts::put(state, &room_id, user_id, receipts::READ, thread, event_id, ts).await?;
            }
        }
    }
    Ok(())
}

/// Whether the event is one we have, of that room.
async fn in_room(svc: &Services, room_id: &RoomId, event_id: &EventId) -> Result<bool> {
    Ok(storage::events::get(&svc.db, event_id.as_str()).await?.is_some_and(|e| e.room_id == room_id.as_str()))
}

#[derive(Deserialize)]
struct ToDeviceContent {
    sender: OwnedUserId,
    #[serde(rename = "type")]
    event_type: String,
    message_id: String,
    messages: to_device::Messages,
}

async fn to_device_edu(state: &AppState, origin: &ServerName, edu: ToDeviceContent) -> Result<()> {
    require_user_of(origin, &edu.sender)?;
    to_device::receive(state, &edu.sender, &edu.event_type, &edu.message_id, &edu.messages).await
}

#[derive(Deserialize)]
struct UserOnly {
    user_id: OwnedUserId,
}

/// A remote user's devices or cross-signing keys changed: our users who share a room with
/// them see it in `/sync` (`device_lists.changed`) and fetch the keys again.
async fn device_list_edu(state: &AppState, origin: &ServerName, user_id: OwnedUserId) -> Result<()> {
    require_user_of(origin, &user_id)?;
    let ours: Vec<OwnedUserId> = storage::rooms::users_sharing_rooms(&state.db, user_id.as_str())
        .await?
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u).ok())
        .filter(|u| u.server_name().as_str() == state.config.server_name)
        .collect();
    if ours.is_empty() {
        return Ok(());
    }
    let mut tx = state.db.begin().await?;
    storage::device_lists::record_change(&mut tx, user_id.as_str()).await?;
    tx.commit().await?;
    state.notifier.notify(ours.iter().map(|u| &**u));
    Ok(())
}

#[derive(Deserialize)]
struct PresenceContent {
    push: Vec<PresenceUpdate>,
}

#[derive(Deserialize)]
struct PresenceUpdate {
    user_id: OwnedUserId,
    presence: String,
    #[serde(default)]
    status_msg: Option<String>,
    #[serde(default)]
    last_active_ago: Option<i64>,
}

/// Presence of remote users, kept like our users' (shown to their room-mates); dropped when
/// presence is off.
async fn presence_edu(state: &AppState, origin: &ServerName, content: PresenceContent) -> Result<()> {
    if !state.presence.enabled() {
        return Ok(());
    }
    let now = storage::now_ms();
    let mut watchers: Vec<OwnedUserId> = Vec::new();
    let mut tx = state.db.begin().await?;
    for update in &content.push {
        if require_user_of(origin, &update.user_id).is_err()
            || !crate::accounts::presence::STATES.contains(&update.presence.as_str())
        {
            continue;
        }
        let sharing = storage::rooms::users_sharing_rooms(&state.db, update.user_id.as_str()).await?;
        if sharing.is_empty() {
            continue;
        }
        let last_active = now - update.last_active_ago.unwrap_or(0).max(0);
        storage::presence::set(
            &mut tx,
            update.user_id.as_str(),
            &update.presence,
            update.status_msg.as_deref(),
            last_active,
            Some(now),
        )
        .await?;
        watchers.extend(sharing.into_iter().filter_map(|u| OwnedUserId::try_from(u).ok()));
    }
    tx.commit().await?;
    state.notifier.notify(watchers.iter().map(|u| &**u));
    Ok(())
}
