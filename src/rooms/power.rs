//! Power levels as client-facing checks read them (the auth rules proper are ruma's).

use ruma::UserId;
use ruma::events::StateEventType;
use serde_json::Value;

use super::state::StateMap;
use crate::Services;
use crate::error::Result;

#[derive(Debug, Clone, Copy)]
pub enum Action {
    Redact,
    Kick,
    Ban,
    Invite,
}

impl Action {
    fn key_and_default(self) -> (&'static str, i64) {
        match self {
            Action::Redact => ("redact", 50),
            Action::Kick => ("kick", 50),
            Action::Ban => ("ban", 50),
            Action::Invite => ("invite", 0),
        }
    }
}

/// A user's power level; room creators of room version 12 have infinite power (i64::MAX).
pub async fn user_level(svc: &Services, state: &StateMap, user: &UserId) -> Result<i64> {
    let create = super::state_pdu(svc, state, &StateEventType::RoomCreate, "").await?;
    let version = create.as_ref().and_then(|c| c.content_str("room_version")).unwrap_or_else(|| "1".into());
    let explicit_creators = ruma::RoomVersionId::try_from(version.as_str())
        .ok()
        .and_then(|v| v.rules())
        .is_some_and(|r| r.authorization.explicitly_privilege_room_creators);
    if explicit_creators && let Some(create) = &create {
        let additional = create.content_value();
        let is_additional = additional
            .get("additional_creators")
            .and_then(Value::as_array)
            .is_some_and(|a| a.iter().any(|u| u.as_str() == Some(user.as_str())));
        if create.sender == user || is_additional {
            return Ok(i64::MAX);
        }
    }
    match super::state_pdu(svc, state, &StateEventType::RoomPowerLevels, "").await? {
        Some(pl) => {
            let content = pl.content_value();
            let level =
                content.get("users").and_then(|u| u.get(user.as_str())).or_else(|| content.get("users_default"));
            Ok(level.and_then(as_int).unwrap_or(0))
        }
        // Without power levels, the creator has 100 and everyone else 0.
        None => Ok(if create.is_some_and(|c| c.sender == user) { 100 } else { 0 }),
    }
}

/// Whether a user's level allows an action.
pub async fn has_level(svc: &Services, state: &StateMap, user: &UserId, action: Action) -> Result<bool> {
    let (key, default) = action.key_and_default();
    let required = match super::state_pdu(svc, state, &StateEventType::RoomPowerLevels, "").await? {
        Some(pl) => pl.content_value().get(key).and_then(as_int).unwrap_or(default),
        None => default,
    };
    Ok(user_level(svc, state, user).await? >= required)
}

/// The level needed to send a state event of type `kind`: `events[kind]`, else
/// `state_default` (50 when unset), or 0 when the room has no power levels at all.
pub fn state_send_level(power_levels: Option<&Value>, kind: &str) -> i64 {
    let Some(content) = power_levels else { return 0 };
    content
        .get("events")
        .and_then(|e| e.get(kind))
        .and_then(as_int)
        .or_else(|| content.get("state_default").and_then(as_int))
        .unwrap_or(50)
}

/// Whether a user's level allows sending a state event of type `kind`.
pub async fn can_send_state(svc: &Services, state: &StateMap, user: &UserId, kind: &str) -> Result<bool> {
    let power_levels =
        super::state_pdu(svc, state, &StateEventType::RoomPowerLevels, "").await?.map(|p| p.content_value());
    Ok(user_level(svc, state, user).await? >= state_send_level(power_levels.as_ref(), kind))
}

/// Power levels are integers, or (before room version 10) strings holding integers.
pub fn as_int(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
}
