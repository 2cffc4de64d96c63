//! History visibility: which events of a room a user may see (spec "History visibility").

use ruma::events::StateEventType;
use ruma::{ServerName, UserId};

use super::pdu::Pdu;
use super::state;
use crate::Services;
use crate::error::{Error, Result};
use crate::storage::events::StoredEvent;

/// Keeps the events `user` may see (and whose room's retention policy has not expired).
/// `currently_joined` is whether the user is in the room now (which opens `shared` history).
pub async fn filter(
    svc: &Services,
    user: &UserId,
    currently_joined: bool,
    events: Vec<StoredEvent>,
) -> Result<Vec<StoredEvent>> {
    let mut visible = Vec::with_capacity(events.len());
    // Consecutive events mostly share a state group: decide once per group.
    let mut last: Option<(i64, bool)> = None;
    let mut expiry = super::retention::Expiry::default();
    for event in events {
        let Some(group) = event.state_group else { continue };
        if expiry.expired(svc, &event).await? {
            continue;
        }
        // Users always see their own membership changes (a leave or a kick included).
        if event.event_type == "m.room.member" && event.state_key.as_deref() == Some(user.as_str()) {
            visible.push(event);
            continue;
        }
        let allowed = match last {
            Some((g, allowed)) if g == group => allowed,
            _ => {
                let allowed = allowed_at(svc, user, currently_joined, group).await?;
                last = Some((group, allowed));
                allowed
            }
        };
        if allowed {
            visible.push(event);
        }
    }
    Ok(visible)
}

/// Whether `user` may see events whose state is `group`.
pub async fn allowed_at(svc: &Services, user: &UserId, currently_joined: bool, group: i64) -> Result<bool> {
    let state = state::load(svc, group).await?;
    let visibility = history_visibility(svc, &state).await?;
    if visibility == "world_readable" {
        return Ok(true);
    }
    let membership = super::membership_in(svc, &state, user).await?;
    Ok(match membership.as_str() {
        "join" => true,
        "invite" => visibility == "invited" || (visibility == "shared" && currently_joined),
        _ => visibility == "shared" && currently_joined,
    })
}

/// The history visibility of a state (`shared` when unset).
async fn history_visibility(svc: &Services, state: &state::StateMap) -> Result<String> {
    Ok(super::state_pdu(svc, state, &StateEventType::RoomHistoryVisibility, "")
        .await?
        .and_then(|p| p.content_str("history_visibility"))
        .unwrap_or_else(|| "shared".to_owned()))
}

/// Whether `server` may see an event whose state is `group` (spec: history visibility, with
/// the memberships of the server's users): a joined user opens it, an invited one too for
/// `invited`, and `shared` history is open to a server in the room now (`currently_in`).
pub async fn server_allowed_at(svc: &Services, server: &ServerName, currently_in: bool, group: i64) -> Result<bool> {
    let state = state::load(svc, group).await?;
    let visibility = history_visibility(svc, &state).await?;
    if visibility == "world_readable" || (visibility == "shared" && currently_in) {
        return Ok(true);
    }
    for ((kind, key), id) in state.iter() {
        if *kind != StateEventType::RoomMember
            || UserId::parse(key.as_str()).map_or(true, |u| u.server_name() != server)
        {
            continue;
        }
        match super::get_pdu(svc, id).await?.and_then(|p| p.content_str("membership")).as_deref() {
            Some("join") => return Ok(true),
            Some("invite") if visibility == "invited" => return Ok(true),
            _ => {}
        }
    }
    Ok(false)
}

/// The users who asked for erasure when deactivating (few: kept in memory, loaded at start).
#[derive(Default)]
pub struct ErasedUsers(std::sync::RwLock<std::collections::HashSet<String>>);

impl ErasedUsers {
    pub async fn load(db: &crate::storage::Db) -> Result<Self> {
        let users = crate::storage::users::erased_users(db).await?;
        Ok(Self(std::sync::RwLock::new(users.into_iter().collect())))
    }

    pub fn insert(&self, user_id: &UserId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).insert(user_id.to_string());
    }

    pub fn remove(&self, user_id: &UserId) {
        self.0.write().unwrap_or_else(|e| e.into_inner()).remove(user_id.as_str());
    }

    /// Takes the list of another (freshly loaded) instance.
    pub fn replace(&self, other: ErasedUsers) {
        let users = other.0.into_inner().unwrap_or_else(|e| e.into_inner());
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = users;
    }

    fn contains(&self, user_id: &UserId) -> bool {
        self.0.read().unwrap_or_else(|e| e.into_inner()).contains(user_id.as_str())
    }
}

/// The pruned copy of an event `viewer` gets instead of the original, when its sender was
/// erased and the viewer was not joined when it was sent (spec: `erase` of account
/// deactivation: users who join later are served redacted copies).
pub async fn erased_copy(svc: &Services, pdu: &Pdu, viewer: &UserId) -> Result<Option<Pdu>> {
    if !svc.erased_users.contains(&pdu.sender) || pdu.sender == viewer {
        return Ok(None);
    }
    let group = crate::storage::events::get(&svc.db, pdu.event_id.as_str()).await?.and_then(|e| e.state_group);
    if let Some(group) = group {
        let state = state::load(svc, group).await?;
        if super::membership_in(svc, &state, viewer).await? == "join" {
            return Ok(None);
        }
    }
    let version = super::room_version(svc, &pdu.room_id).await?;
    let rules = super::versions::rules(&version)?;
    let object = pdu.canonical_object().map_err(anyhow::Error::msg)?;
    let pruned = ruma::canonical_json::redact(object, &rules.redaction, None).map_err(|e| Error::Internal(e.into()))?;
    let json = ruma::canonical_json::to_canonical_value(&pruned).map_err(|e| Error::Internal(e.into()))?.to_string();
    let copy =
        Pdu::parse(pdu.event_id.clone(), &json, Some(&pdu.room_id)).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    Ok(Some(copy))
}
