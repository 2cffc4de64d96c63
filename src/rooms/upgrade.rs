//! Room upgrades (spec "Room Upgrades"), done as Synapse does them: a new room of the new
//! version with the old room's state and bans, a tombstone in the old room, the local
//! aliases and the directory entry moved, and the old room's power levels restricted.

use std::collections::HashSet;
use std::sync::Mutex;

use axum::http::StatusCode;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::create::{self, CreateRoomRequest, InitialStateEvent};
use super::power::{self, as_int};
use super::{Draft, current_state, get_pdu, membership_in, send, state_pdu, versions};
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// State of the old room copied into the new one (besides power levels and space children).
const COPIED_STATE: [StateEventType; 8] = [
    StateEventType::RoomJoinRules,
    StateEventType::RoomName,
    StateEventType::RoomTopic,
    StateEventType::RoomHistoryVisibility,
    StateEventType::RoomGuestAccess,
    StateEventType::RoomAvatar,
    StateEventType::RoomEncryption,
    StateEventType::RoomServerAcl,
];

/// The rooms being upgraded now.
#[derive(Default)]
pub struct InProgress(Mutex<HashSet<OwnedRoomId>>);

/// A room's place in `InProgress`, given back when the upgrade ends (however it ends).
struct Upgrading<'a> {
    all: &'a InProgress,
    room: OwnedRoomId,
}

impl InProgress {
    /// Claims the room, or 400 when another upgrade of it is running (as Synapse): two
    /// concurrent upgrades would make two replacement rooms.
    fn claim(&self, room: &RoomId) -> Result<Upgrading<'_>> {
        let mut rooms = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if !rooms.insert(room.to_owned()) {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "An upgrade for this room is currently in progress",
            ));
        }
        Ok(Upgrading { all: self, room: room.to_owned() })
    }
}

impl Drop for Upgrading<'_> {
    fn drop(&mut self) {
        self.all.0.lock().unwrap_or_else(|e| e.into_inner()).remove(&self.room);
    }
}

/// Upgrades `old_room` to `new_version` for `user`; returns the new room's ID.
/// `additional_creators` only applies to versions that have them.
pub async fn upgrade_room(
    svc: &Services,
    user: &UserId,
    old_room: &RoomId,
    new_version: &str,
    additional_creators: Vec<OwnedUserId>,
) -> Result<OwnedRoomId> {
    let version = create::upgrade_version(new_version)?;
    let _upgrading = svc.rooms.upgrades.claim(old_room)?;
    let rules = versions::rules(&version)?;
    let old_state = current_state(svc, old_room).await?;
    if membership_in(svc, &old_state, user).await? != "join" {
        return Err(Error::forbidden("You are not joined to this room"));
    }
    if !power::can_send_state(svc, &old_state, user, "m.room.tombstone").await? {
        return Err(Error::forbidden("You cannot upgrade this room"));
    }
    let content_of = |kind: StateEventType| {
        let state = old_state.clone();
        async move { Ok::<_, Error>(state_pdu(svc, &state, &kind, "").await?.map(|p| p.content_value())) }
    };

    // The create event names the predecessor and keeps the old room's type and federation flag.
    let old_create = content_of(StateEventType::RoomCreate).await?.unwrap_or_default();
    let mut creation = Map::new();
    creation.insert("predecessor".into(), json!({ "room_id": old_room }));
    for key in ["type", "m.federate"] {
        if let Some(value) = old_create.get(key) {
            creation.insert(key.into(), value.clone());
        }
    }
    let mut creators = vec![user.to_owned()];
    if rules.authorization.additional_room_creators {
        let additional: Vec<OwnedUserId> = additional_creators.into_iter().filter(|c| c != user).collect();
        if !additional.is_empty() {
            creation.insert("additional_creators".into(), json!(additional));
        }
        creators.extend(additional);
    }

    let mut initial_state = Vec::new();
    for kind in COPIED_STATE {
        if let Some(content) = content_of(kind.clone()).await? {
            initial_state.push(InitialStateEvent { kind: kind.to_string(), state_key: String::new(), content });
        }
    }
    let mut bans = Vec::new();
    for ((kind, key), id) in old_state.iter() {
        let is_space_child = *kind == StateEventType::SpaceChild && old_create.get("type") == Some(&json!("m.space"));
        if !(is_space_child || *kind == StateEventType::RoomMember) {
            continue;
        }
        let Some(pdu) = get_pdu(svc, id).await? else { continue };
        let content = pdu.content_value();
        if is_space_child && content.as_object().is_some_and(|c| !c.is_empty()) {
            // An empty space child is one removed from the space.
            initial_state.push(InitialStateEvent { kind: kind.to_string(), state_key: key.clone(), content });
        } else if content.get("membership").and_then(Value::as_str) == Some("ban") {
            let mut ban = json!({ "membership": "ban" });
            if let Some(reason) = content.get("reason") {
                ban["reason"] = reason.clone();
            }
            bans.push((key.clone(), ban));
        }
    }

    // The old room's power levels; the upgrading user is raised while the state is copied.
    let old_power_levels = content_of(StateEventType::RoomPowerLevels).await?;
    let user_old_level = power::user_level(svc, &old_state, user).await?;
    let explicit_creators = rules.authorization.explicitly_privilege_room_creators;
    let final_power_levels = old_power_levels
        .as_ref()
        .map(|pl| carried_power_levels(pl, &creators, explicit_creators, user, user_old_level));
    let initial_power_levels = final_power_levels.as_ref().map(|pl| {
        let mut pl = pl.clone();
        if !explicit_creators {
            raise_to_copy_level(&mut pl, user);
        }
        pl
    });

    let request = CreateRoomRequest {
        room_version: Some(version.to_string()),
        preset: Some("private_chat".into()),
        creation_content: Some(creation),
        initial_state,
        power_level_content_override: initial_power_levels.as_ref().and_then(|pl| pl.as_object().cloned()),
        ..Default::default()
    };
    let new_room = create::create_room(svc, user, request).await?;

    for (target, ban) in bans {
        let draft = Draft::state(TimelineEventType::RoomMember, target, ban);
        send_best_effort(svc, &new_room, user, draft, "copy a ban").await?;
    }
    if let Some(pl) = final_power_levels.filter(|pl| Some(pl) != initial_power_levels.as_ref()) {
        send(svc, &new_room, user, Draft::state(TimelineEventType::RoomPowerLevels, "", pl), None).await?;
    }

    let tombstone = json!({ "body": "This room has been replaced", "replacement_room": new_room });
    send(svc, old_room, user, Draft::state(TimelineEventType::RoomTombstone, "", tombstone), None).await?;

    let mut tx = svc.db.begin().await?;
    storage::rooms::move_aliases(&mut tx, old_room.as_str(), new_room.as_str()).await?;
    if storage::rooms::is_published(&svc.db, old_room.as_str()).await? {
        storage::rooms::set_published(&mut tx, new_room.as_str(), true).await?;
        storage::rooms::set_published(&mut tx, old_room.as_str(), false).await?;
    }
    tx.commit().await?;
    if let Some(canonical) = content_of(StateEventType::RoomCanonicalAlias).await? {
        move_canonical_alias(svc, user, old_room, &new_room, canonical).await?;
    }
    if let Some(pl) = old_power_levels {
        restrict_old_room(svc, user, old_room, pl).await?;
    }
    tracing::info!(%old_room, %new_room, version = %version, %user, "room upgraded");
    Ok(new_room)
}

/// The old room's power levels as the new room's: creators of a version that privileges
/// them may not be listed; the upgrading creator of such a room keeps 100 in one that does not.
fn carried_power_levels(
    old: &Value,
    creators: &[OwnedUserId],
    explicit_creators: bool,
    user: &UserId,
    user_old_level: i64,
) -> Value {
    let mut pl = old.clone();
    if !pl.get("users").is_some_and(Value::is_object) {
        pl["users"] = json!({});
    }
    if let Some(users) = pl.get_mut("users").and_then(Value::as_object_mut) {
        if explicit_creators {
            for creator in creators {
                users.remove(creator.as_str());
            }
        } else if user_old_level == i64::MAX {
            let listed = users.get(user.as_str()).and_then(as_int).unwrap_or(0);
            users.insert(user.to_string(), json!(listed.max(100)));
        }
    }
    pl
}

/// Gives `user` the level needed to send every copied state event and the bans (as Synapse).
fn raise_to_copy_level(pl: &mut Value, user: &UserId) {
    let level = |key: &str| pl.get(key).and_then(as_int).unwrap_or(50);
    let events_max =
        pl.get("events").and_then(Value::as_object).map_or(0, |e| e.values().filter_map(as_int).max().unwrap_or(0));
    let needed = level("state_default").max(level("ban")).max(events_max);
    let users_default = pl.get("users_default").and_then(as_int).unwrap_or(0);
    if let Some(users) = pl.get_mut("users").and_then(Value::as_object_mut) {
        let current = users.get(user.as_str()).and_then(as_int).unwrap_or(users_default);
        if current < needed {
            users.insert(user.to_string(), json!(needed));
        }
    }
}

/// Moves this server's aliases out of the old room's canonical alias into the new room's.
async fn move_canonical_alias(
    svc: &Services,
    user: &UserId,
    old_room: &RoomId,
    new_room: &RoomId,
    old_content: Value,
) -> Result<()> {
    let local =
        |alias: &str| RoomAliasId::parse(alias).is_ok_and(|a| a.server_name().as_str() == svc.config.server_name);
    let mut kept = old_content.as_object().cloned().unwrap_or_default();
    let mut moved = Map::new();
    if let Some(alias) = old_content.get("alias").and_then(Value::as_str).filter(|a| local(a)) {
        moved.insert("alias".into(), json!(alias));
        kept.remove("alias");
    }
    if let Some(alt) = old_content.get("alt_aliases").and_then(Value::as_array) {
        let (moved_alt, kept_alt): (Vec<&Value>, Vec<&Value>) = alt.iter().partition(|a| a.as_str().is_some_and(local));
        if !moved_alt.is_empty() {
            moved.insert("alt_aliases".into(), json!(moved_alt));
            kept.insert("alt_aliases".into(), json!(kept_alt));
        }
    }
    if moved.is_empty() {
        return Ok(());
    }
    let draft = |content: Map<String, Value>| Draft::state(TimelineEventType::RoomCanonicalAlias, "", content.into());
    send_best_effort(svc, old_room, user, draft(kept), "update the old room's canonical alias").await?;
    send_best_effort(svc, new_room, user, draft(moved), "set the new room's canonical alias").await
}

/// Stops ordinary users from talking and inviting in the old room: `events_default` and
/// `invite` go up to moderator level, above `users_default` (as Synapse).
async fn restrict_old_room(svc: &Services, user: &UserId, old_room: &RoomId, mut pl: Value) -> Result<()> {
    let users_default = pl.get("users_default").and_then(as_int).unwrap_or(0);
    let restricted = (users_default + 1).max(50);
    let mut changed = false;
    for key in ["invite", "events_default"] {
        if pl.get(key).and_then(as_int).unwrap_or(0) < restricted {
            pl[key] = json!(restricted);
            changed = true;
        }
    }
    if !changed {
        return Ok(());
    }
    let draft = Draft::state(TimelineEventType::RoomPowerLevels, "", pl);
    send_best_effort(svc, old_room, user, draft, "restrict the old room's power levels").await
}

/// Sends an event the upgrade does without when the user may not send it.
async fn send_best_effort(svc: &Services, room: &RoomId, user: &UserId, draft: Draft, what: &str) -> Result<()> {
    match send(svc, room, user, draft, None).await {
        Err(e) if e.errcode() == "M_FORBIDDEN" => {
            tracing::warn!(%room, %user, error = %e, "room upgrade: cannot {what}");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}
