//! Events served to other servers: one event, the state at an event (full or as IDs), the
//! auth chain of an event, backfill and the gap before an event (`get_missing_events`).
//! A server gets what the room's history visibility lets its users see (spec: a server is
//! "in the room" at an event when one of its users is), and nothing once the room's server
//! ACL denies it.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;

use ruma::{EventId, OwnedEventId, RoomId, ServerName};
use serde_json::{Value, json};

use crate::Services;
use crate::error::{Error, Result};
use crate::rooms::{self, pdu::Pdu, resolve, state, visibility};
use crate::storage;

/// Most events of one backfill or `get_missing_events` answer.
pub const MAX_EVENTS: usize = 100;

/// A transaction wrapping PDUs, as `/event` and `/backfill` answer.
pub fn transaction(svc: &Services, pdus: Vec<Value>) -> Value {
    json!({ "origin": svc.config.server_name, "origin_server_ts": storage::now_ms(), "pdus": pdus })
}

/// Whether one of the server's users is joined to the room now.
async fn in_room_now(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    Ok(rooms::servers_in_room(svc, room_id).await?.iter().any(|s| **s == *server))
}

/// Decides, once per state group, whether `server` may see events of a room.
struct Visibility<'a> {
    svc: &'a Services,
    server: &'a ServerName,
    in_room_now: bool,
    by_group: HashMap<i64, bool>,
}

impl<'a> Visibility<'a> {
    async fn new(svc: &'a Services, room_id: &RoomId, server: &'a ServerName) -> Result<Self> {
        Ok(Visibility { svc, server, in_room_now: in_room_now(svc, room_id, server).await?, by_group: HashMap::new() })
    }

    async fn allows(&mut self, event_id: &EventId) -> Result<bool> {
        let Some(group) = storage::events::get(&self.svc.db, event_id.as_str()).await?.and_then(|e| e.state_group)
        else {
            return Ok(false);
        };
        if let Some(allowed) = self.by_group.get(&group) {
            return Ok(*allowed);
        }
        let allowed = visibility::server_allowed_at(self.svc, self.server, self.in_room_now, group).await?;
        self.by_group.insert(group, allowed);
        Ok(allowed)
    }

    /// The PDU as this server gets it: whole when visible, else redacted (as Synapse, so
    /// that the DAG has no holes).
    async fn format(&mut self, pdu: &Pdu) -> Result<Value> {
        let full = rooms::pdu::federation_format(&pdu.json).map_err(|e| Error::Internal(e.into()))?;
        if self.allows(&pdu.event_id).await? {
            return Ok(full);
        }
        let rules = rooms::versions::rules(&rooms::room_version(self.svc, &pdu.room_id).await?)?;
        let object: ruma::CanonicalJsonObject = serde_json::from_value(full).map_err(|e| Error::Internal(e.into()))?;
        let pruned =
            ruma::canonical_json::redact(object, &rules.redaction, None).map_err(|e| Error::Internal(e.into()))?;
        serde_json::to_value(pruned).map_err(|e| Error::Internal(e.into()))
    }
}

/// An event of `room_id` (any room when None) that `server` may see: 404 when unknown or
/// rejected, 403 when the server may not see it.
pub async fn visible_event(
    svc: &Services,
    server: &ServerName,
    room_id: Option<&RoomId>,
    event_id: &EventId,
) -> Result<Arc<Pdu>> {
    let not_found = || Error::not_found("Event not found");
    let pdu = rooms::get_pdu(svc, event_id).await?.ok_or_else(not_found)?;
    if pdu.rejected || room_id.is_some_and(|r| r != pdu.room_id) {
        return Err(not_found());
    }
    rooms::require_server_allowed(svc, &pdu.room_id, server).await?;
    if !Visibility::new(svc, &pdu.room_id, server).await?.allows(event_id).await? {
        return Err(Error::forbidden("Your server may not see this event"));
    }
    Ok(pdu)
}

/// `GET /event/{eventId}`: the event, in a transaction.
pub async fn event(svc: &Services, server: &ServerName, event_id: &EventId) -> Result<Value> {
    let pdu = visible_event(svc, server, None, event_id).await?;
    let json = rooms::pdu::federation_format(&pdu.json).map_err(|e| Error::Internal(e.into()))?;
    Ok(transaction(svc, vec![json]))
}

/// The state of the room before an event (what it was authorised against: the resolved
/// states after its prev events) and the auth chain of that state, as event IDs.
pub async fn state_ids_at(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<(Vec<OwnedEventId>, Vec<OwnedEventId>)> {
    let pdu = visible_event(svc, server, Some(room_id), event_id).await?;
    let mut states = Vec::with_capacity(pdu.prev_events.len());
    for prev in &pdu.prev_events {
        if let Some(group) = storage::events::get(&svc.db, prev.as_str()).await?.and_then(|e| e.state_group) {
            states.push(state::load(svc, group).await?);
        }
    }
    let version = rooms::room_version(svc, room_id).await?;
    let state_before = resolve::resolve(svc, &version, &states).await?;
    let mut loaded = HashMap::new();
    let chain = resolve::auth_chain(svc, state_before.values(), &mut loaded).await?;
    let pdu_ids: BTreeSet<OwnedEventId> = state_before.into_values().collect();
    let chain: BTreeSet<OwnedEventId> = chain.into_iter().collect();
    Ok((pdu_ids.into_iter().collect(), chain.into_iter().collect()))
}

/// The PDUs of some event IDs in the federation format (those we do not have are left out).
pub async fn pdus(svc: &Services, ids: &[OwnedEventId]) -> Result<Vec<Value>> {
    let mut pdus = Vec::with_capacity(ids.len());
    for id in ids {
        if let Some(pdu) = rooms::get_pdu(svc, id).await? {
            pdus.push(rooms::pdu::federation_format(&pdu.json).map_err(|e| Error::Internal(e.into()))?);
        }
    }
    Ok(pdus)
}

/// `GET /event_auth/{roomId}/{eventId}`: the full auth chain of an event.
pub async fn event_auth(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
) -> Result<Vec<Value>> {
    let pdu = visible_event(svc, server, Some(room_id), event_id).await?;
    let mut loaded = HashMap::new();
    let chain = resolve::auth_chain(svc, std::iter::once(&pdu.event_id), &mut loaded).await?;
    let chain: Vec<OwnedEventId> = chain.into_iter().collect::<BTreeSet<_>>().into_iter().collect();
    pdus(svc, &chain).await
}

/// `GET /backfill/{roomId}`: up to `limit` events walking back from `from` (included) along
/// prev events, deepest first.
pub async fn backfill(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    from: &[OwnedEventId],
    limit: usize,
) -> Result<Vec<Value>> {
    rooms::require_server_allowed(svc, room_id, server).await?;
    let mut visibility = Visibility::new(svc, room_id, server).await?;
    let walked = walk_back(svc, room_id, from.iter().cloned(), &HashSet::new(), limit.min(MAX_EVENTS), 0).await?;
    // A server that could see none of these events was not in the room then.
    let mut any_visible = false;
    for pdu in &walked {
        any_visible |= visibility.allows(&pdu.event_id).await?;
    }
    if !any_visible && !walked.is_empty() {
        return Err(Error::forbidden("Your server was not in the room at these events"));
    }
    let mut answer = Vec::with_capacity(walked.len());
    for pdu in &walked {
        answer.push(visibility.format(pdu).await?);
    }
    Ok(answer)
}

/// `POST /get_missing_events/{roomId}`: up to `limit` events before `latest` (excluded) that
/// are not `earliest` or before them, at `min_depth` or deeper, oldest first.
pub async fn missing_events(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    earliest: &[OwnedEventId],
    latest: &[OwnedEventId],
    limit: usize,
    min_depth: u64,
) -> Result<Vec<Value>> {
    rooms::require_server_allowed(svc, room_id, server).await?;
    rooms::room_version(svc, room_id).await?;
    if !in_room_now(svc, room_id, server).await? {
        return Err(Error::forbidden("Your server is not in the room"));
    }
    let mut visibility = Visibility::new(svc, room_id, server).await?;
    let mut start = Vec::new();
    for id in latest {
        if let Some(pdu) = rooms::get_pdu(svc, id).await?
            && pdu.room_id == room_id
        {
            start.extend(pdu.prev_events.iter().cloned());
        }
    }
    let stop: HashSet<OwnedEventId> = earliest.iter().cloned().collect();
    let mut walked = walk_back(svc, room_id, start.into_iter(), &stop, limit.min(MAX_EVENTS), min_depth).await?;
    walked.reverse();
    let mut answer = Vec::with_capacity(walked.len());
    for pdu in &walked {
        answer.push(visibility.format(pdu).await?);
    }
    Ok(answer)
}

/// Events of the room from `start` backwards along prev events, breadth first by depth
/// (deepest first), skipping `stop`, events below `min_depth` and those we do not have.
async fn walk_back(
    svc: &Services,
    room_id: &RoomId,
    start: impl Iterator<Item = OwnedEventId>,
    stop: &HashSet<OwnedEventId>,
    limit: usize,
    min_depth: u64,
) -> Result<Vec<Arc<Pdu>>> {
    let mut seen: HashSet<OwnedEventId> = HashSet::new();
    let mut queue: VecDeque<OwnedEventId> = start.collect();
    let mut found: Vec<Arc<Pdu>> = Vec::new();
    while let Some(id) = queue.pop_front() {
        if found.len() >= limit {
            break;
        }
        if stop.contains(&id) || !seen.insert(id.clone()) {
            continue;
        }
        let Some(pdu) = rooms::get_pdu(svc, &id).await? else { continue };
        if pdu.room_id != room_id || pdu.rejected || pdu.depth < min_depth {
            continue;
        }
        queue.extend(pdu.prev_events.iter().cloned());
        found.push(pdu);
    }
    found.sort_by_key(|pdu| std::cmp::Reverse(pdu.depth));
    Ok(found)
}
