//! Room creation (`createRoom`): the create event, the creator's join, power levels, the
//! preset's rules, initial state, name, topic and invites, in the spec's order.

use ruma::events::TimelineEventType;
use ruma::{OwnedRoomAliasId, OwnedRoomId, OwnedUserId, RoomAliasId, RoomVersionId, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{Draft, send, send_create, versions};
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

#[derive(Debug, Deserialize, Default)]
pub struct CreateRoomRequest {
    #[serde(default)]
    pub visibility: Option<String>,
    #[serde(default)]
    pub room_alias_name: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub topic: Option<String>,
    #[serde(default)]
    pub invite: Vec<OwnedUserId>,
    #[serde(default)]
    pub room_version: Option<String>,
    #[serde(default)]
    pub creation_content: Option<Map<String, Value>>,
    #[serde(default)]
    pub initial_state: Vec<InitialStateEvent>,
    #[serde(default)]
    pub preset: Option<String>,
    #[serde(default)]
    pub is_direct: bool,
    #[serde(default)]
    pub power_level_content_override: Option<Map<String, Value>>,
}

#[derive(Debug, Deserialize, Clone)]
pub struct InitialStateEvent {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub state_key: String,
    pub content: Value,
}

/// Creates a room for `creator`; returns its ID.
pub async fn create_room(svc: &Services, creator: &UserId, req: CreateRoomRequest) -> Result<OwnedRoomId> {
    let version = match &req.room_version {
        Some(v) => versions::parse(v)?,
        None => versions::DEFAULT,
    };
    let rules = versions::rules(&version)?;
    let public = req.visibility.as_deref() == Some("public");
    let preset = match req.preset.as_deref() {
        Some(p @ ("private_chat" | "public_chat" | "trusted_private_chat")) => p.to_owned(),
        Some(other) => return Err(Error::bad_json(format!("Unknown preset {other}"))),
        None if public => "public_chat".to_owned(),
        None => "private_chat".to_owned(),
    };
    if let Some(v) = &req.visibility
        && v != "public"
        && v != "private"
    {
        return Err(Error::bad_json("visibility must be public or private"));
    }
    let alias = match &req.room_alias_name {
        Some(name) => Some(new_alias(svc, name).await?),
        None => None,
    };
    for user in &req.invite {
        if user == creator {
            return Err(Error::bad_json("Cannot invite yourself"));
        }
    }
    let trusted = preset == "trusted_private_chat";

    // 1. m.room.create
    let mut create = req.creation_content.clone().unwrap_or_default();
    create.insert("room_version".into(), json!(version.as_str()));
    if rules.authorization.use_room_create_sender {
        create.remove("creator");
    } else {
        create.insert("creator".into(), json!(creator));
    }
    let mut creators = vec![creator.to_owned()];
    if rules.authorization.additional_room_creators {
        let mut additional: Vec<OwnedUserId> = match create.get("additional_creators") {
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|e| Error::bad_json(format!("additional_creators: {e}")))?
            }
            None => vec![],
        };
        if trusted {
            additional.extend(req.invite.iter().cloned());
        }
        additional.sort();
        additional.dedup();
        if !additional.is_empty() {
            create.insert("additional_creators".into(), json!(additional));
        }
        creators.extend(additional);
    }
    let room_id = send_create(svc, &version, creator, Value::Object(create)).await?;

    // 2. the creator joins
    send(svc, &room_id, creator, member_draft(svc, creator, "join", None).await?, None).await?;

    // 3. power levels
    let mut users = Map::new();
    if !rules.authorization.explicitly_privilege_room_creators {
        users.insert(creator.to_string(), json!(100));
        if trusted {
            for user in &req.invite {
                users.insert(user.to_string(), json!(100));
            }
        }
    }
    let mut power_levels = json!({
        "users": users,
        "users_default": 0,
        "events": {
            "m.room.name": 50,
            "m.room.power_levels": 100,
            "m.room.history_visibility": 100,
            "m.room.canonical_alias": 50,
            "m.room.avatar": 50,
            "m.room.tombstone": 100,
            "m.room.server_acl": 100,
            "m.room.encryption": 100,
        },
        "events_default": 0,
        "state_default": 50,
        "ban": 50,
        "kick": 50,
        "redact": 50,
        "invite": if preset == "public_chat" { 0 } else { 50 },
        "historical": 100,
    });
    if let Some(over) = &req.power_level_content_override {
        for (k, v) in over {
            power_levels[k] = v.clone();
        }
    }
    if rules.authorization.explicitly_privilege_room_creators
        && let Some(Value::Object(users)) = power_levels.get_mut("users")
    {
        // Creators have infinite power in room version 12 and may not be listed.
        for c in &creators {
            users.remove(c.as_str());
        }
    }
    send(svc, &room_id, creator, Draft::state(TimelineEventType::RoomPowerLevels, "", power_levels), None).await?;

    // 4. canonical alias
    if let Some(alias) = &alias {
        let draft = Draft::state(TimelineEventType::RoomCanonicalAlias, "", json!({ "alias": alias }));
        send(svc, &room_id, creator, draft, None).await?;
    }

    // 5. the preset's rules, overridden by initial_state with the same type and key
    let join_rule = if preset == "public_chat" { "public" } else { "invite" };
    let mut state: Vec<InitialStateEvent> = vec![
        InitialStateEvent {
            kind: "m.room.join_rules".into(),
            state_key: String::new(),
            content: json!({ "join_rule": join_rule }),
        },
        InitialStateEvent {
            kind: "m.room.history_visibility".into(),
            state_key: String::new(),
            content: json!({ "history_visibility": "shared" }),
        },
    ];
    if preset != "public_chat" {
        state.push(InitialStateEvent {
            kind: "m.room.guest_access".into(),
            state_key: String::new(),
            content: json!({ "guest_access": "can_join" }),
        });
    }
    for event in &req.initial_state {
        if matches!(event.kind.as_str(), "m.room.create" | "m.room.member" | "m.room.power_levels") {
            continue;
        }
        match state.iter_mut().find(|s| s.kind == event.kind && s.state_key == event.state_key) {
            Some(existing) => *existing = event.clone(),
            None => state.push(event.clone()),
        }
    }
    // 6. name and topic take precedence over initial_state
    if let Some(name) = &req.name {
        state.retain(|s| s.kind != "m.room.name");
        state.push(InitialStateEvent {
            kind: "m.room.name".into(),
            state_key: String::new(),
            content: json!({ "name": name }),
        });
    }
    if let Some(topic) = &req.topic {
        state.retain(|s| s.kind != "m.room.topic");
        let content = json!({ "topic": topic, "m.topic": { "m.text": [{ "body": topic }] } });
        state.push(InitialStateEvent { kind: "m.room.topic".into(), state_key: String::new(), content });
    }
    for event in state {
        send(svc, &room_id, creator, Draft::state(event.kind.as_str(), event.state_key, event.content), None).await?;
    }

    // 7. invites
    for user in &req.invite {
        let mut draft = member_draft(svc, user, "invite", None).await?;
        if req.is_direct {
            draft.content["is_direct"] = json!(true);
        }
        super::membership::send_invite(svc, &room_id, creator, user, draft).await?;
    }

    let mut tx = svc.db.begin().await?;
    if public {
        storage::rooms::set_published(&mut tx, room_id.as_str(), true).await?;
    }
    if let Some(alias) = &alias {
        storage::rooms::create_alias(&mut tx, alias.as_str(), room_id.as_str(), creator.as_str()).await?;
    }
    tx.commit().await?;
    tracing::info!(%room_id, %creator, version = %version, preset, "room created");
    Ok(room_id)
}

/// Validates a new local alias `#name:server` and checks it is free.
async fn new_alias(svc: &Services, name: &str) -> Result<OwnedRoomAliasId> {
    let alias = RoomAliasId::parse(format!("#{name}:{}", svc.config.server_name))
        .map_err(|e| Error::invalid_param(format!("Invalid alias: {e}")))?;
    if storage::rooms::resolve_alias(&svc.db, alias.as_str()).await?.is_some() {
        return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_ROOM_IN_USE", "Room alias already taken"));
    }
    Ok(alias)
}

/// A membership event for `target`, with the profile of local users (as Synapse does).
pub async fn member_draft(svc: &Services, target: &UserId, membership: &str, reason: Option<&str>) -> Result<Draft> {
    let mut content = json!({ "membership": membership });
    if target.server_name() == svc.config.server_name.as_str()
        && let Some(user) = storage::users::get(&svc.db, target.as_str()).await?
    {
        if let Some(name) = user.displayname {
            content["displayname"] = json!(name);
        }
        if let Some(url) = user.avatar_url {
            content["avatar_url"] = json!(url);
        }
    }
    if let Some(reason) = reason {
        content["reason"] = json!(reason);
    }
    Ok(Draft::state(TimelineEventType::RoomMember, target.as_str(), content))
}

/// The version a room upgrade asks for.
pub fn upgrade_version(version: &str) -> Result<RoomVersionId> {
    versions::parse(version)
}
