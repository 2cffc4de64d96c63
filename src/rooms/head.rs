//! The head of each room: what its next event builds on (version, current state and its
//! group, forward extremities) and its members, as of its last append. Kept in memory per
//! room, so that a send reads no room row, extremity or member list from the database:
//! `append` replaces a room's head under the room lock once its transaction is committed.
//!
//! Anything that changes those rows outside `append` (a room joined over federation, a
//! purge, another process writing the same database) calls `forget`, the one invalidation
//! entry point; the next reader loads the head from the database again.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, RoomId, RoomVersionId, UserId};

use super::pdu::Pdu;
use super::state::{self, StateMap};
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// A room's members (current state): user ID -> membership and member event ID.
pub type Members = BTreeMap<String, Member>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub membership: String,
    pub event_id: String,
}

/// What a new event of a room is built on, and who is in the room.
#[derive(Debug)]
pub struct Head {
    pub version: RoomVersionId,
    /// The current state group (None before the create event is appended).
    pub group: Option<i64>,
    pub state: Arc<StateMap>,
    /// The forward extremities, by event ID.
    pub prevs: Vec<Arc<Pdu>>,
    pub members: Arc<Members>,
}

impl Head {
    /// Users joined to or invited into the room, or knocking (those woken by its news).
    pub fn interested_users(&self) -> impl Iterator<Item = &str> {
        self.members
            .iter()
            .filter(|(_, m)| matches!(m.membership.as_str(), "join" | "invite" | "knock"))
            .map(|(user, _)| user.as_str())
    }

    /// The servers with at least one user joined to the room (ours included when it has
    /// one): where the room's events and EDUs go.
    pub fn servers(&self) -> BTreeSet<OwnedServerName> {
        self.members
            .iter()
            .filter(|(_, m)| m.membership == "join")
            .filter_map(|(user, _)| UserId::parse(user.as_str()).ok().map(|u| u.server_name().to_owned()))
            .collect()
    }
}

/// Rooms kept before the cache starts again (a head holds the member list).
const CACHE_LIMIT: usize = 10_000;

/// The heads in memory. `epoch` counts replacements and invalidations: a head loaded from
/// the database is only kept when none happened meanwhile, so a load racing an append or a
/// `forget` cannot put an older head back.
#[derive(Default)]
pub struct Heads {
    rooms: Mutex<HashMap<OwnedRoomId, Arc<Head>>>,
    epoch: AtomicU64,
}

/// The head of a room: from memory, else from the database; 404 `M_NOT_FOUND` for a room
/// this server does not know.
pub async fn load(svc: &Services, room_id: &RoomId) -> Result<Arc<Head>> {
    find(svc, room_id).await?.ok_or_else(|| Error::not_found("Unknown room"))
}

/// The head of a room, None for a room this server does not know.
pub async fn find(svc: &Services, room_id: &RoomId) -> Result<Option<Arc<Head>>> {
    let heads = &svc.rooms.heads;
    if let Some(head) = heads.rooms.lock().unwrap_or_else(|e| e.into_inner()).get(room_id) {
        return Ok(Some(head.clone()));
    }
    let epoch = heads.epoch.load(Ordering::Acquire);
    let Some(head) = read(svc, room_id).await? else { return Ok(None) };
    let head = Arc::new(head);
    let mut rooms = heads.rooms.lock().unwrap_or_else(|e| e.into_inner());
    if heads.epoch.load(Ordering::Acquire) == epoch {
        if rooms.len() >= CACHE_LIMIT {
            rooms.clear();
        }
        rooms.entry(room_id.to_owned()).or_insert_with(|| head.clone());
    }
    Ok(Some(head))
}

async fn read(svc: &Services, room_id: &RoomId) -> Result<Option<Head>> {
    let Some((version, group)) = storage::rooms::get(&svc.db, room_id.as_str()).await? else { return Ok(None) };
    let version = RoomVersionId::try_from(version).map_err(|e| Error::Internal(e.into()))?;
    let state = match group {
        Some(g) => state::load(svc, g).await?,
        None => Arc::default(),
    };
    let mut prevs = Vec::new();
    for id in storage::rooms::extremities(&svc.db, room_id.as_str()).await? {
        let id = OwnedEventId::try_from(id).map_err(|e| Error::Internal(e.into()))?;
        prevs.push(
            super::get_pdu(svc, &id)
                .await?
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("missing extremity {id}")))?,
        );
    }
    let members = storage::rooms::members(&svc.db, room_id.as_str())
        .await?
        .into_iter()
        .map(|(user, membership, event_id)| (user, Member { membership, event_id }))
        .collect();
    Ok(Some(Head { version, group, state, prevs, members: Arc::new(members) }))
}

/// Replaces a room's head with the one its append just committed (the caller holds the
/// room lock).
pub(crate) fn advance(svc: &Services, room_id: &RoomId, head: Head) {
    let heads = &svc.rooms.heads;
    let mut rooms = heads.rooms.lock().unwrap_or_else(|e| e.into_inner());
    heads.epoch.fetch_add(1, Ordering::AcqRel);
    if rooms.len() >= CACHE_LIMIT {
        rooms.clear();
    }
    rooms.insert(room_id.to_owned(), Arc::new(head));
    drop(rooms);
    announce(svc, room_id);
}

/// Forgets a room's head, here and in the other processes: its rows were changed other than
/// by `append`.
pub fn forget(svc: &Services, room_id: &RoomId) {
    forget_here(svc, room_id);
    announce(svc, room_id);
}

/// Tells the other processes of the database that the room's head changed.
fn announce(svc: &Services, room_id: &RoomId) {
    svc.cluster.publisher().send(crate::cluster::Message::RoomHeadChanged { room: room_id.to_owned() });
}

/// Forgets every room's head in this process (announcements may have been missed).
pub fn forget_all(svc: &Services) {
    let heads = &svc.rooms.heads;
    let mut rooms = heads.rooms.lock().unwrap_or_else(|e| e.into_inner());
    heads.epoch.fetch_add(1, Ordering::AcqRel);
    rooms.clear();
}

/// Forgets a room's head in this process only (another process announced a change).
pub fn forget_here(svc: &Services, room_id: &RoomId) {
    let heads = &svc.rooms.heads;
    let mut rooms = heads.rooms.lock().unwrap_or_else(|e| e.into_inner());
    heads.epoch.fetch_add(1, Ordering::AcqRel);
    rooms.remove(room_id);
}

/// The head of a room a new event is to be built on (the caller holds the room lock): 500
/// when the room has no state yet. When several processes share the database, the head in
/// memory is checked against the stored forward extremities first: another process may have
/// appended under the same lock moments ago, before its announcement arrived here.
pub(crate) async fn to_build_on(svc: &Services, room_id: &RoomId) -> Result<Arc<Head>> {
    let mut head = load(svc, room_id).await?;
    if svc.cluster.publisher().is_shared() {
        let stored = storage::rooms::extremities(&svc.db, room_id.as_str()).await?;
        let mut cached: Vec<&str> = head.prevs.iter().map(|p| p.event_id.as_str()).collect();
        let mut stored: Vec<&str> = stored.iter().map(String::as_str).collect();
        cached.sort_unstable();
        stored.sort_unstable();
        if cached != stored {
            forget_here(svc, room_id);
            head = load(svc, room_id).await?;
        }
    }
    if head.group.is_none() {
        return Err(Error::Internal(anyhow::anyhow!("room {room_id} has no state")));
    }
    Ok(head)
}

/// A room's members after changes of its current state (entries of other types ignored).
pub(crate) fn apply_member_changes(members: &Members, changes: &[storage::rooms::StateChange<'_>]) -> Members {
    let mut members = members.clone();
    for change in changes.iter().filter(|c| c.event_type == "m.room.member") {
        match (change.event_id, change.membership) {
            (Some(event_id), Some(membership)) => {
                let member = Member { membership: membership.to_owned(), event_id: event_id.to_owned() };
                members.insert(change.state_key.to_owned(), member);
            }
            _ => {
                members.remove(change.state_key);
            }
        }
    }
    members
}
