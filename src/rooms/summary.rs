//! What a room shows to those outside it (the spec's room summary, as the space hierarchy
//! and room previews return it), and who may see it.

use ruma::events::StateEventType;
use ruma::{OwnedRoomId, RoomId, ServerName, UserId};
use serde_json::{Map, Value, json};

use super::state_pdu;
use crate::Services;
use crate::error::Result;
use crate::storage;

/// A room's summary: the `room_summary` fields of the spec (a public rooms chunk,
/// `room_type`, `allowed_room_ids`, `encryption`, `room_version`), made here or received
/// from another server.
pub struct Summary {
    pub room_id: OwnedRoomId,
    pub fields: Map<String, Value>,
}

/// The summary of a room this server knows, `None` for an unknown room.
pub async fn load(svc: &Services, room_id: &RoomId) -> Result<Option<Summary>> {
    // One read of the room row gives both its version and its current state group.
    let Some((version, group)) = storage::rooms::get(&svc.db, room_id.as_str()).await? else {
        return Ok(None);
    };
    let state = match group {
        Some(group) => super::state::load(svc, group).await?,
        None => Default::default(),
    };
    // The fields are read from these state events, by index.
    let mut contents = Vec::new();
    for kind in [
        StateEventType::RoomName,
        StateEventType::RoomTopic,
        StateEventType::RoomCanonicalAlias,
        StateEventType::RoomAvatar,
        StateEventType::RoomJoinRules,
        StateEventType::RoomHistoryVisibility,
        StateEventType::RoomGuestAccess,
        StateEventType::RoomCreate,
        StateEventType::RoomEncryption,
    ] {
        contents.push(state_pdu(svc, &state, &kind, "").await?.map(|p| p.content_value()));
    }
    let text = |i: usize, field: &str| -> Option<String> {
        contents[i].as_ref()?.get(field)?.as_str().filter(|s| !s.is_empty()).map(str::to_owned)
    };
    let join_rule = text(4, "join_rule");
    let restricted = matches!(join_rule.as_deref(), Some("restricted" | "knock_restricted"));
    let allowed_room_ids: Vec<String> = match (&contents[4], restricted) {
        (Some(rules), true) => rules
            .get("allow")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .filter(|a| a.get("type").and_then(Value::as_str) == Some("m.room_membership"))
            .filter_map(|a| a.get("room_id")?.as_str().map(str::to_owned))
            .collect(),
        _ => Vec::new(),
    };

    let mut fields = Map::new();
    fields.insert("room_id".into(), json!(room_id));
    fields.insert(
        "num_joined_members".into(),
        json!(storage::rooms::joined_member_count(&svc.db, room_id.as_str()).await?),
    );
    fields.insert("world_readable".into(), json!(text(5, "history_visibility").as_deref() == Some("world_readable")));
    fields.insert("guest_can_join".into(), json!(text(6, "guest_access").as_deref() == Some("can_join")));
    fields.insert("room_version".into(), json!(version));
    let optional = [
        ("name", text(0, "name")),
        ("topic", text(1, "topic")),
        ("canonical_alias", text(2, "alias")),
        ("avatar_url", text(3, "url")),
        ("join_rule", join_rule),
        ("room_type", text(7, "type")),
        ("encryption", text(8, "algorithm")),
    ];
    for (field, value) in optional {
        if let Some(value) = value {
            fields.insert(field.into(), json!(value));
        }
    }
    if !allowed_room_ids.is_empty() {
        fields.insert("allowed_room_ids".into(), json!(allowed_room_ids));
    }
    Ok(Some(Summary { room_id: room_id.to_owned(), fields }))
}

impl Summary {
    /// Whether the summary may be shown to `user` (`None`: an unauthenticated request):
    /// members and invitees, anyone for world-readable, public and knockable rooms, and for
    /// restricted rooms the members of an allowed room.
    pub async fn visible_to(&self, svc: &Services, user: Option<&UserId>) -> Result<bool> {
        let join_rule = self.fields.get("join_rule").and_then(Value::as_str);
        if self.fields.get("world_readable") == Some(&json!(true))
            || matches!(join_rule, Some("public" | "knock" | "knock_restricted"))
        {
            return Ok(true);
        }
        let Some(user) = user else { return Ok(false) };
        if matches!(self.membership(svc, user).await?.as_deref(), Some("join" | "invite")) {
            return Ok(true);
        }
        let allowed = self.fields.get("allowed_room_ids").and_then(Value::as_array).into_iter().flatten();
        for allowed in allowed.filter_map(Value::as_str) {
            if storage::rooms::membership(&svc.db, allowed, user.as_str()).await?.as_deref() == Some("join") {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Whether another server may see the summary (the federation hierarchy): as for users,
    /// with restricted rooms always shown (the asking server filters them for its user), and
    /// private rooms shown to a server with a member or invitee.
    pub async fn visible_to_server(&self, svc: &Services, server: &ServerName) -> Result<bool> {
        let join_rule = self.fields.get("join_rule").and_then(Value::as_str);
        if self.fields.get("world_readable") == Some(&json!(true))
            || matches!(join_rule, Some("public" | "knock" | "knock_restricted" | "restricted"))
        {
            return Ok(true);
        }
        let members = storage::rooms::interested_users(&svc.db, self.room_id.as_str()).await?;
        Ok(members.iter().any(|user| UserId::parse(user.as_str()).is_ok_and(|u| u.server_name() == server)))
    }

    /// The user's membership in the room, if they have one.
    pub async fn membership(&self, svc: &Services, user: &UserId) -> Result<Option<String>> {
        Ok(storage::rooms::membership(&svc.db, self.room_id.as_str(), user.as_str()).await?)
    }
}
