//! Extensions of a sliding sync response: to-device messages, end-to-end encryption
//! state, account data, receipts and typing. Each covers the rooms of the lists and
//! subscriptions it names (all of them by default), and only what changed since the
//! client's position.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use ruma::RoomId;
use ruma::api::client::sync::sync_events::v5::request::{self, ExtensionRoomConfig};
use serde_json::{Map, Value, json};

use super::connection::Position;
use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::rooms::format::object;
use crate::storage;
use crate::sync::v2;

/// The rooms a response covers, for the extensions to pick from.
pub struct Scope<'a> {
    /// Rooms in range of each list.
    pub lists: &'a BTreeMap<String, Vec<String>>,
    /// Subscribed rooms the user may see.
    pub subscriptions: &'a [String],
    /// Rooms this response sends whole (the client has nothing of them yet).
    pub initial: &'a HashSet<String>,
}

impl Scope<'_> {
    fn rooms(&self, lists: Option<&[String]>, rooms: Option<&[ExtensionRoomConfig]>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for (name, ids) in self.lists {
            if lists.is_none_or(|l| l.iter().any(|n| n == "*" || n == name)) {
                out.extend(ids.iter().cloned());
            }
        }
        match rooms {
            None => out.extend(self.subscriptions.iter().cloned()),
            Some(rooms) => {
                for room in rooms {
                    match room {
                        ExtensionRoomConfig::AllSubscribed => out.extend(self.subscriptions.iter().cloned()),
                        ExtensionRoomConfig::Room(id) if self.subscriptions.iter().any(|s| s == id.as_str()) => {
                            out.insert(id.to_string());
                        }
                        _ => {}
                    }
                }
            }
        }
        out
    }
}

/// Drops the to-device messages the client acknowledged with the extension's `since`.
pub async fn acknowledge_to_device(svc: &Services, me: &Identity, ext: &request::Extensions) -> Result<()> {
    if let Some(since) = &ext.to_device.since {
        let since: i64 =
            since.parse().map_err(|_| Error::invalid_param(format!("Invalid to_device since token {since:?}")))?;
        crate::e2ee::to_device::acknowledge(svc, me, since).await?;
    }
    Ok(())
}

/// The `extensions` object of a response and whether it carries anything new.
pub async fn compute(
    svc: &Services,
    me: &Identity,
    ext: &request::Extensions,
    scope: &Scope<'_>,
    since: Option<Position>,
    stream: i64,
    typing: u64,
) -> Result<(Value, bool)> {
    let user = me.user_id.as_str();
    let mut out = Map::new();
    let mut news = false;

    if ext.to_device.enabled == Some(true) {
        let limit = ext.to_device.limit.map_or(v2::TO_DEVICE_LIMIT, |l| i64::from(l).clamp(1, v2::TO_DEVICE_LIMIT));
        let (events, last) =
            crate::e2ee::to_device::pending_events(&svc.db, user, &me.device_id, (i64::MIN, stream), limit).await?;
        let next = if events.len() as i64 == limit { last.unwrap_or(stream) } else { stream };
        news |= !events.is_empty();
        out.insert("to_device".into(), object([("next_batch", next.to_string().into()), ("events", events.into())]));
    }

    if ext.e2ee.enabled == Some(true) {
        let mut e2ee = json!({
            "device_one_time_keys_count": crate::e2ee::keys::one_time_key_counts(&svc.db, user, &me.device_id).await?,
            "device_unused_fallback_key_types":
                storage::e2ee_keys::device_unused_fallback_key_types(&svc.db, user, &me.device_id).await?,
        });
        if let Some(since) = since {
            let (changed, left) = v2::device_list_changes(svc, &me.user_id, since.stream, stream).await?;
            news |= !changed.is_empty() || !left.is_empty();
            e2ee["device_lists"] = json!({ "changed": changed, "left": left });
        }
        out.insert("e2ee".into(), e2ee);
    }

    if ext.account_data.enabled == Some(true) {
        let rooms = scope.rooms(ext.account_data.lists.as_deref(), ext.account_data.rooms.as_deref());
        let changed = storage::account_data::changed_since(&svc.db, user, since.map_or(-1, |s| s.stream)).await?;
        let mut global = Vec::new();
        let mut per_room: Map<String, Value> = Map::new();
        for (room, kind, content) in changed {
            let event = v2::account_data_event(&kind, &content);
            if room.is_empty() {
                global.push(event);
            } else if rooms.contains(&room) {
                per_room
                    .entry(room)
                    .or_insert_with(|| json!([]))
                    .as_array_mut()
                    .into_iter()
                    .for_each(|a| a.push(event.clone()));
            }
        }
        news |= !global.is_empty() || !per_room.is_empty();
        out.insert("account_data".into(), object([("global", global.into()), ("rooms", per_room.into())]));
    }

    if ext.receipts.enabled == Some(true) {
        let rooms = scope.rooms(ext.receipts.lists.as_deref(), ext.receipts.rooms.as_deref());
        let changed: HashSet<String> = match since {
            Some(s) => {
                storage::sliding_sync::rooms_with_receipts(&svc.db, s.stream, stream).await?.into_iter().collect()
            }
            None => HashSet::new(),
        };
        let mut per_room = Map::new();
        for room in rooms {
            let content = match since {
                Some(_) if !scope.initial.contains(&room) && changed.contains(&room) => {
                    storage::receipts::in_range(&svc.db, &room, user, since.map_or(0, |s| s.stream), stream).await?
                }
                Some(_) if !scope.initial.contains(&room) => continue,
                _ => storage::receipts::latest(&svc.db, &room, user, stream).await?,
            };
            if !content.is_empty() {
                per_room.insert(room, json!({ "type": "m.receipt", "content": content }));
            }
        }
        news |= !per_room.is_empty();
        out.insert("receipts".into(), json!({ "rooms": per_room }));
    }

    if ext.typing.enabled == Some(true) {
        let rooms = scope.rooms(ext.typing.lists.as_deref(), ext.typing.rooms.as_deref());
        // A serial from before a restart is meaningless: resend current typing state.
        let changed: HashSet<String> = match since {
            Some(s) => svc
                .typing
                .changed_since(if s.typing > typing { 0 } else { s.typing })
                .into_iter()
                .map(|r| r.to_string())
                .collect(),
            None => HashSet::new(),
        };
        let mut per_room = Map::new();
        for room in rooms {
            let whole = since.is_none() || scope.initial.contains(&room);
            if !whole && !changed.contains(&room) {
                continue;
            }
            let room_id = RoomId::parse(&room).map_err(|e| Error::Internal(e.into()))?;
            let users = svc.typing.typing_in(&room_id);
            if whole && users.is_empty() {
                continue;
            }
            per_room.insert(room, json!({ "type": "m.typing", "content": { "user_ids": users } }));
        }
        news |= !per_room.is_empty();
        out.insert("typing".into(), json!({ "rooms": per_room }));
    }
    Ok((Value::Object(out), news))
}
