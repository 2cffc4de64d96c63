//! Rooms as event DAGs: build, hash, sign and authorise events, keep the state at every
//! event, and append to the timeline. The one place where events enter a room.

pub mod cache;
pub mod create;
pub mod federation;
pub mod format;
pub mod head;
pub mod hierarchy;
pub mod inbound;
pub mod membership;
pub mod pdu;
pub mod power;
pub mod receipts;
pub mod resolve;
pub mod retention;
pub mod search;
pub mod state;
pub mod summary;
pub mod timeline;
pub mod typing;
pub mod upgrade;
pub mod versions;
pub mod visibility;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use ruma::events::{StateEventType, TimelineEventType};
use ruma::room_version_rules::{EventIdFormatVersion, EventsReferenceFormatVersion, RoomVersionRules};
use ruma::{
    CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId, RoomId,
    RoomVersionId, ServerName, UserId,
};
use serde_json::{Value, json};

use self::pdu::Pdu;
use self::state::StateMap;
use crate::Services;
use crate::error::{Error, Result};
use crate::storage::{self, events::NewEvent, events::TimelineEntry, rooms::StateChange};

/// Largest PDU, in bytes of canonical JSON (spec).
pub const MAX_PDU_BYTES: usize = 65_536;

/// One async lock per room, held across the processes of the database: a local mutex (so
/// that one process waits on one database lock per room at most), then a PostgreSQL
/// advisory lock named after `purpose` and the room.
struct RoomLocks {
    purpose: &'static str,
    local: Mutex<HashMap<OwnedRoomId, Arc<tokio::sync::Mutex<()>>>>,
}

/// A room's lock, released when dropped.
pub(crate) struct RoomGuard {
    _shared: Option<storage::cluster::AdvisoryLock>,
    _local: tokio::sync::OwnedMutexGuard<()>,
}

impl RoomLocks {
    fn new(purpose: &'static str) -> Self {
        RoomLocks { purpose, local: Mutex::default() }
    }

    async fn lock(&self, db: &storage::Db, room_id: &RoomId) -> Result<RoomGuard> {
        let local = {
            let mut locks = self.local.lock().unwrap_or_else(|e| e.into_inner());
            locks.entry(room_id.to_owned()).or_default().clone()
        };
        let local = local.lock_owned().await;
        let key = storage::cluster::lock_key(&format!("{}:{room_id}", self.purpose));
        let shared = storage::cluster::advisory_lock(db, key).await?;
        Ok(RoomGuard { _shared: shared, _local: local })
    }
}

/// Caches of immutable data (state groups, events), the rooms' heads (`head.rs`), the
/// per-room write locks, the per-room locks of joins over federation, and the rooms being
/// upgraded.
pub struct Rooms {
    locks: RoomLocks,
    /// Held by a join over federation, so that a second local user joining the same room
    /// meanwhile waits and then joins locally instead of starting the room again.
    remote_joins: RoomLocks,
    pub(crate) state_cache: Mutex<cache::Lru<i64, Arc<StateMap>>>,
    event_cache: Mutex<cache::Lru<OwnedEventId, Arc<Pdu>>>,
    heads: head::Heads,
    upgrades: upgrade::InProgress,
}

/// Bytes of events kept in memory: the auth events and latest events of the rooms in use
/// (several thousand messages). The recent sends are also in the heads and the sync log.
const EVENT_CACHE_BYTES: usize = 4 << 20;

impl Default for Rooms {
    fn default() -> Self {
        Rooms {
            locks: RoomLocks::new("room"),
            remote_joins: RoomLocks::new("remote-join"),
            state_cache: Mutex::new(cache::Lru::new(state::CACHE_BYTES)),
            event_cache: Mutex::new(cache::Lru::new(EVENT_CACHE_BYTES)),
            heads: head::Heads::default(),
            upgrades: upgrade::InProgress::default(),
        }
    }
}

impl Rooms {
    /// The room's write lock: held from reading its forward extremities to appending.
    pub(crate) async fn lock(&self, db: &storage::Db, room_id: &RoomId) -> Result<RoomGuard> {
        self.locks.lock(db, room_id).await
    }

    async fn remote_join_lock(&self, db: &storage::Db, room_id: &RoomId) -> Result<RoomGuard> {
        self.remote_joins.lock(db, room_id).await
    }

    pub(crate) fn cached_event(&self, event_id: &EventId) -> Option<Arc<Pdu>> {
        self.event_cache.lock().unwrap_or_else(|e| e.into_inner()).get(event_id)
    }

    fn cache_event(&self, pdu: Arc<Pdu>) {
        let weight = pdu.approximate_bytes();
        self.event_cache.lock().unwrap_or_else(|e| e.into_inner()).insert(pdu.event_id.clone(), pdu, weight);
    }

    pub(crate) fn forget_event(&self, event_id: &EventId) {
        self.event_cache.lock().unwrap_or_else(|e| e.into_inner()).remove(event_id);
    }

    pub(crate) fn forget_all_events(&self) {
        self.event_cache.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }
}

/// An event a local user wants to send.
#[derive(Debug, Clone)]
pub struct Draft {
    pub kind: TimelineEventType,
    pub state_key: Option<String>,
    pub content: Value,
}

impl Draft {
    pub fn state(kind: impl Into<TimelineEventType>, state_key: impl Into<String>, content: Value) -> Self {
        Draft { kind: kind.into(), state_key: Some(state_key.into()), content }
    }

    pub fn message(kind: impl Into<TimelineEventType>, content: Value) -> Self {
        Draft { kind: kind.into(), state_key: None, content }
    }
}

/// Loads an event by ID (cached).
pub async fn get_pdu(svc: &Services, event_id: &EventId) -> Result<Option<Arc<Pdu>>> {
    if let Some(pdu) = svc.rooms.cached_event(event_id) {
        return Ok(Some(pdu));
    }
    let Some(stored) = storage::events::get(&svc.db, event_id.as_str()).await? else {
        return Ok(None);
    };
    let pdu = Arc::new(pdu_of_stored(event_id.to_owned(), &stored)?);
    svc.rooms.cache_event(pdu.clone());
    Ok(Some(pdu))
}

/// An event as the database stores it.
pub(crate) fn pdu_of_stored(event_id: OwnedEventId, stored: &storage::events::StoredEvent) -> Result<Pdu> {
    let room_id = RoomId::parse(&stored.room_id).map_err(|e| Error::Internal(e.into()))?;
    let mut pdu =
        Pdu::parse(event_id, &stored.json, Some(&room_id)).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    pdu.rejected = stored.rejected;
    Ok(pdu)
}

/// The thread an event belongs to: the root it replies to with `m.thread`, or, for an event
/// relating to a threaded event (a reaction, an edit), that event's thread.
pub async fn thread_of(svc: &Services, event: &Pdu) -> Result<Option<OwnedEventId>> {
    match event.relation() {
        Some((rel_type, root)) if rel_type == "m.thread" => Ok(Some(root)),
        Some((_, target)) => Ok(get_pdu(svc, &target).await?.and_then(|t| match t.relation() {
            Some((rel_type, root)) if rel_type == "m.thread" => Some(root),
            _ => None,
        })),
        None => Ok(None),
    }
}

/// The version of a room this server knows, or 404 `M_NOT_FOUND`.
pub async fn room_version(svc: &Services, room_id: &RoomId) -> Result<RoomVersionId> {
    let (version, _) =
        storage::rooms::get(&svc.db, room_id.as_str()).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
    RoomVersionId::try_from(version).map_err(|e| Error::Internal(e.into()))
}

/// The current state of a room.
pub async fn current_state(svc: &Services, room_id: &RoomId) -> Result<Arc<StateMap>> {
    let (_, group) =
        storage::rooms::get(&svc.db, room_id.as_str()).await?.ok_or_else(|| Error::not_found("Unknown room"))?;
    match group {
        Some(g) => state::load(svc, g).await,
        None => Ok(Arc::default()),
    }
}

/// The event of a state entry in a state map.
pub async fn state_pdu(svc: &Services, state: &StateMap, kind: &StateEventType, key: &str) -> Result<Option<Arc<Pdu>>> {
    match state.get(&(kind.clone(), key.to_owned())) {
        Some(id) => get_pdu(svc, id).await,
        None => Ok(None),
    }
}

/// The servers with at least one user joined to the room (ours included when it has one):
/// where the room's events and EDUs go; none for a room this server does not know.
pub async fn servers_in_room(svc: &Services, room_id: &RoomId) -> Result<BTreeSet<OwnedServerName>> {
    Ok(head::find(svc, room_id).await?.map(|head| head.servers()).unwrap_or_default())
}

/// Wakes the long-polls of a room's members (for news that is not a room event).
pub async fn wake_members(svc: &Services, room_id: &RoomId) -> Result<()> {
    if let Some(head) = head::find(svc, room_id).await? {
        wake_interested(svc, &head);
    }
    Ok(())
}

/// Wakes the long-polls of the room's members joined, invited or knocking.
fn wake_interested(svc: &Services, head: &head::Head) {
    let users: Vec<OwnedUserId> = head.interested_users().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
    svc.notifier.notify(users.iter().map(|u| &**u));
}

/// Whether the room's server ACL (`m.room.server_acl` of the current state) lets `server`
/// take part in it.
pub async fn server_allowed(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<bool> {
    let state = current_state(svc, room_id).await?;
    let Some(acl) = state_pdu(svc, &state, &StateEventType::RoomServerAcl, "").await? else { return Ok(true) };
    // An ACL whose content does not parse denies nobody (as Synapse).
    Ok(serde_json::from_str::<ruma::events::room::server_acl::RoomServerAclEventContent>(acl.content.get())
        .map_or(true, |content| content.is_allowed(server)))
}

/// The other servers with a user joined to a room `user` is joined to (those told of the
/// user's device-list and presence changes).
pub async fn servers_sharing_rooms_with(svc: &Services, user: &UserId) -> Result<BTreeSet<OwnedServerName>> {
    Ok(storage::rooms::users_sharing_rooms(&svc.db, user.as_str())
        .await?
        .iter()
        .filter_map(|u| UserId::parse(u.as_str()).ok().map(|u| u.server_name().to_owned()))
        .filter(|s| s.as_str() != svc.config.server_name)
        .collect())
}

/// 403 `M_FORBIDDEN` when the room's server ACL denies `server`.
pub async fn require_server_allowed(svc: &Services, room_id: &RoomId, server: &ServerName) -> Result<()> {
    if !server_allowed(svc, room_id, server).await? {
        return Err(Error::forbidden("Your server is denied by the room's server ACL"));
    }
    Ok(())
}

/// A user's membership in a state map ("leave" when absent).
pub async fn membership_in(svc: &Services, state: &StateMap, user: &UserId) -> Result<String> {
    Ok(state_pdu(svc, state, &StateEventType::RoomMember, user.as_str())
        .await?
        .and_then(|p| p.content_str("membership"))
        .unwrap_or_else(|| "leave".to_owned()))
}

/// Stripped state of a room (invites, knocks): its identity, and the member event of
/// `member` (the invitee, or the inviter in an invite sent to another server).
pub async fn stripped_state(svc: &Services, state: &StateMap, member: &UserId) -> Result<Vec<Value>> {
    let keys = [
        (StateEventType::RoomCreate, ""),
        (StateEventType::RoomJoinRules, ""),
        (StateEventType::RoomName, ""),
        (StateEventType::RoomAvatar, ""),
        (StateEventType::RoomCanonicalAlias, ""),
        (StateEventType::RoomEncryption, ""),
        (StateEventType::RoomTopic, ""),
        (StateEventType::RoomMember, member.as_str()),
    ];
    let mut out = Vec::new();
    for (kind, key) in keys {
        if let Some(pdu) = state_pdu(svc, state, &kind, key).await? {
            out.push(pdu.to_stripped());
        }
    }
    Ok(out)
}

/// Sends an event from a local user into an existing room: authorise it against the
/// room's current state, sign it, append it, wake the users concerned.
/// `txn` = (device, transaction ID) makes the send idempotent.
pub async fn send(
    svc: &Services,
    room_id: &RoomId,
    sender: &UserId,
    draft: Draft,
    txn: Option<(&str, &str)>,
) -> Result<OwnedEventId> {
    let guard = svc.rooms.lock(&svc.db, room_id).await?;
    if let Some((device, txn_id)) = txn
        && let Some(existing) =
            storage::events::txn_event(&svc.db, sender.as_str(), device, room_id.as_str(), txn_id).await?
    {
        return OwnedEventId::try_from(existing).map_err(|e| Error::Internal(e.into()));
    }
    let head = head::to_build_on(svc, room_id).await?;
    let built = build(svc, &head.version, Some(room_id), sender, &draft, &head.prevs, &head.state).await?;
    let event_id = append_local(svc, built, &head.state, head.group, txn).await?;
    drop(guard);
    if draft.kind == TimelineEventType::RoomGuestAccess {
        membership::remove_guests_unless_open(svc, room_id).await?;
    }
    Ok(event_id)
}

/// Creates a room by sending its `m.room.create` event; returns the room ID (derived from
/// the event in room version 12).
pub async fn send_create(
    svc: &Services,
    version: &RoomVersionId,
    sender: &UserId,
    content: Value,
) -> Result<OwnedRoomId> {
    let rules = versions::rules(version)?;
    let draft = Draft::state(TimelineEventType::RoomCreate, "", content);
    let empty: Arc<StateMap> = Arc::default();
    let (built, room_id) = loop {
        let room_id = if rules.authorization.room_create_event_id_as_room_id {
            None
        } else {
            Some(ruma::RoomId::new_v1(
                svc.config
                    .server_name
                    .as_str()
                    .try_into()
                    .map_err(|e: ruma::IdParseError| Error::Internal(e.into()))?,
            ))
        };
        let built = build(svc, version, room_id.as_deref(), sender, &draft, &[], &empty).await?;
        let room_id = built.pdu.room_id.clone();
        let mut tx = svc.db.begin().await?;
        let created = storage::rooms::create(&mut tx, room_id.as_str(), version.as_str(), sender.as_str()).await?;
        tx.commit().await?;
        if created {
            break (built, room_id);
        }
        // Room version 12 derives the room ID from the create event, so one user creating
        // two rooms alike in the same millisecond would get one room: build again later.
        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
    };
    let _guard = svc.rooms.lock(&svc.db, &room_id).await?;
    append_local(svc, built, &empty, None, None).await?;
    Ok(room_id)
}

/// A signed, authorised event ready to append.
pub(crate) struct Built {
    pdu: Pdu,
    rules: RoomVersionRules,
}

/// The state entries the auth rules of one event may look at.
type AuthState = HashMap<(StateEventType, String), Arc<Pdu>>;

/// An event before hashing and signing: its PDU fields and the auth state it was built on.
/// Also the template `make_join` and the like hand to another server.
pub(crate) struct Proto {
    pub object: CanonicalJsonObject,
    pub rules: RoomVersionRules,
    auth_state: AuthState,
}

/// Builds, hashes, signs and authorises an event against `state_before`.
async fn build(
    svc: &Services,
    version: &RoomVersionId,
    room_id: Option<&RoomId>,
    sender: &UserId,
    draft: &Draft,
    prevs: &[Arc<Pdu>],
    state_before: &StateMap,
) -> Result<Built> {
    let proto = prepare(svc, version, room_id, sender, draft, prevs, state_before).await?;
    let pdu = sign(svc, proto.object, &proto.rules, room_id)?;
    authorise(&proto.rules, &pdu, &proto.auth_state)?;
    Ok(Built { pdu, rules: proto.rules })
}

/// The unsigned PDU fields of `draft` on `prevs`, with the auth events the rules select
/// from `state_before`.
async fn prepare(
    svc: &Services,
    version: &RoomVersionId,
    room_id: Option<&RoomId>,
    sender: &UserId,
    draft: &Draft,
    prevs: &[Arc<Pdu>],
    state_before: &StateMap,
) -> Result<Proto> {
    let rules = versions::rules(version)?;
    format::validate_content(&draft.kind, &draft.content)?;
    let content_raw = serde_json::value::to_raw_value(&draft.content).map_err(|e| Error::Internal(e.into()))?;
    let auth_types = ruma::state_res::auth_types_for_event(
        &draft.kind,
        sender,
        draft.state_key.as_deref(),
        &content_raw,
        &rules.authorization,
    )
    .map_err(Error::bad_json)?;

    // The state entries the auth rules may look at, loaded up front (the checks are sync).
    let mut auth_state = AuthState::new();
    let mut wanted = auth_types.clone();
    wanted.push((StateEventType::RoomCreate, String::new()));
    for key in wanted {
        if let Some(id) = state_before.get(&key)
            && let Some(pdu) = get_pdu(svc, id).await?
        {
            auth_state.insert(key, pdu);
        }
    }
    let auth_events: Vec<Arc<Pdu>> = auth_types.iter().filter_map(|k| auth_state.get(k).cloned()).collect();

    let depth = prevs.iter().map(|p| p.depth).max().unwrap_or(0).saturating_add(1).min(ruma::UInt::MAX.into());
    let mut object = CanonicalJsonObject::new();
    let reference = |p: &Arc<Pdu>| -> Result<CanonicalJsonValue> {
        Ok(match rules.events_reference_format {
            EventsReferenceFormatVersion::V1 => {
                let hash = ruma::signatures::reference_hash(&p.canonical_object().map_err(anyhow::Error::msg)?, &rules)
                    .map_err(|e| Error::Internal(e.into()))?;
                CanonicalJsonValue::Array(vec![
                    CanonicalJsonValue::String(p.event_id.to_string()),
                    CanonicalJsonValue::Object([("sha256".to_owned(), CanonicalJsonValue::String(hash))].into()),
                ])
            }
            _ => CanonicalJsonValue::String(p.event_id.to_string()),
        })
    };
    let auth_refs = auth_events.iter().map(reference).collect::<Result<Vec<_>>>()?;
    let prev_refs = prevs.iter().map(reference).collect::<Result<Vec<_>>>()?;
    object.insert("auth_events".into(), CanonicalJsonValue::Array(auth_refs));
    object.insert("prev_events".into(), CanonicalJsonValue::Array(prev_refs));
    let mut content = draft.content.clone();
    if draft.kind == TimelineEventType::RoomRedaction
        && !rules.redaction.content_field_redacts
        && let Some(obj) = content.as_object_mut()
    {
        // Before room version 11 the target is a top-level key, not part of the content.
        obj.remove("redacts");
    }
    let content = CanonicalJsonValue::try_from(content).map_err(|e| Error::bad_json(e.to_string()))?;
    object.insert("content".into(), content);
    object.insert("depth".into(), CanonicalJsonValue::Integer(ruma::Int::try_from(depth).unwrap_or(ruma::Int::MAX)));
    let now = ruma::MilliSecondsSinceUnixEpoch::now();
    object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(now.0.into()));
    if !rules.authorization.use_room_create_sender {
        // Room versions before 11 carry the origin server.
        object.insert("origin".into(), CanonicalJsonValue::String(svc.config.server_name.clone()));
    }
    if let Some(room_id) = room_id {
        object.insert("room_id".into(), CanonicalJsonValue::String(room_id.to_string()));
    }
    object.insert("sender".into(), CanonicalJsonValue::String(sender.to_string()));
    object.insert("type".into(), CanonicalJsonValue::String(draft.kind.to_string()));
    if let Some(key) = &draft.state_key {
        object.insert("state_key".into(), CanonicalJsonValue::String(key.clone()));
    }
    if draft.kind == TimelineEventType::RoomRedaction
        && !rules.redaction.content_field_redacts
        && let Some(target) = draft.content.get("redacts").and_then(Value::as_str)
    {
        object.insert("redacts".into(), CanonicalJsonValue::String(target.to_owned()));
    }
    Ok(Proto { object, rules, auth_state })
}

/// Hashes and signs a PDU with the server's key and parses it with its event ID (a new
/// `$id:server` for room versions 1-2, the reference hash after). `room_id` is None only
/// for the create event of room version 12, whose ID derives the room's.
pub(crate) fn sign(
    svc: &Services,
    mut object: CanonicalJsonObject,
    rules: &RoomVersionRules,
    room_id: Option<&RoomId>,
) -> Result<Pdu> {
    if rules.event_id_format == EventIdFormatVersion::V1 {
        let id = EventId::new_v1(
            svc.config.server_name.as_str().try_into().map_err(|e: ruma::IdParseError| Error::Internal(e.into()))?,
        );
        object.insert("event_id".into(), CanonicalJsonValue::String(id.to_string()));
    }
    ruma::signatures::hash_and_sign_event(
        &svc.config.server_name,
        svc.server_key.pair(),
        &mut object,
        &rules.redaction,
    )
    .map_err(too_large_or_internal)?;
    let json = ruma::canonical_json::to_canonical_value(&object)
        .map_err(|e| Error::Internal(e.into()))
        .map(|v| v.to_string())?;
    if json.len() > MAX_PDU_BYTES {
        return Err(Error::too_large("Event is larger than 65536 bytes"));
    }
    let event_id = match rules.event_id_format {
        EventIdFormatVersion::V1 => match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => EventId::parse(id).map_err(|e| Error::Internal(e.into()))?,
            _ => return Err(Error::Internal(anyhow::anyhow!("v1 event without event_id"))),
        },
        _ => {
            let hash = ruma::signatures::reference_hash(&object, rules).map_err(too_large_or_internal)?;
            EventId::parse(format!("${hash}")).map_err(|e| Error::Internal(e.into()))?
        }
    };
    let room_id = match room_id {
        Some(r) => r.to_owned(),
        // Room version 12: the room ID is the create event's reference hash.
        None => RoomId::parse(format!("!{}", &event_id.as_str()[1..])).map_err(|e| Error::Internal(e.into()))?,
    };
    Pdu::parse(event_id, &json, Some(&room_id)).map_err(|e| Error::Internal(anyhow::anyhow!(e)))
}

/// The auth rules for an event against the state it was built on: 403 `M_FORBIDDEN`.
fn authorise(rules: &RoomVersionRules, pdu: &Pdu, auth_state: &AuthState) -> Result<()> {
    // The create event is fetched by ID too (room version 12 derives it from the room ID).
    let by_id: HashMap<&EventId, &Arc<Pdu>> = auth_state.values().map(|p| (&*p.event_id, p)).collect();
    ruma::state_res::check_state_independent_auth_rules(&rules.authorization, pdu, |id: &EventId| {
        by_id.get(id).map(|p| Arc::clone(p))
    })
    .map_err(|e| Error::forbidden(format!("Event not allowed: {e}")))?;
    ruma::state_res::check_state_dependent_auth_rules(&rules.authorization, pdu, |kind: &StateEventType, key: &str| {
        auth_state.get(&(kind.clone(), key.to_owned())).cloned()
    })
    .map_err(|e| Error::forbidden(format!("Event not allowed: {e}")))
}

fn too_large_or_internal(e: ruma::signatures::JsonError) -> Error {
    match e {
        ruma::signatures::JsonError::PduTooLarge => Error::too_large("Event is larger than 65536 bytes"),
        e => Error::Internal(e.into()),
    }
}

/// How an event being appended came.
pub(crate) struct Arrival<'a> {
    /// (device, transaction ID) of a local client's send.
    pub txn: Option<(&'a str, &'a str)>,
    /// Failed auth against the room's current state: stored, but neither shown nor built on.
    pub soft_failed: bool,
    /// The servers a local event is sent to, queued in the transaction that stores it.
    pub destinations: &'a [OwnedServerName],
}

/// Persists a built local event on top of `state_before` (group `group_before`).
async fn append_local(
    svc: &Services,
    built: Built,
    state_before: &Arc<StateMap>,
    group_before: Option<i64>,
    txn: Option<(&str, &str)>,
) -> Result<OwnedEventId> {
    let Built { pdu, rules } = built;
    // The servers in the room before the event (after it, only this server may be added,
    // by a local join). A member who leaves or is kicked or banned is not in the room
    // after the event: their server must still hear of it.
    let mut destinations = servers_in_room(svc, &pdu.room_id).await?;
    if pdu.kind == TimelineEventType::RoomMember
        && matches!(pdu.content_str("membership").as_deref(), Some("leave" | "ban"))
        && let Some(target) = pdu.state_key.as_deref().and_then(|k| UserId::parse(k).ok())
    {
        destinations.insert(target.server_name().to_owned());
    }
    let destinations: Vec<OwnedServerName> = destinations.into_iter().collect();
    let arrival = Arrival { txn, soft_failed: false, destinations: &destinations };
    append(svc, &pdu, &rules, state_before, group_before, arrival).await
}

/// What an append wrote: its stream position, the state groups and states after the event and
/// of the room (which differ when the DAG forked), the room's members, the event it redacted,
/// and the appservices to wake.
struct Written {
    pos: i64,
    group: Option<i64>,
    state_after: Arc<StateMap>,
    new_group: Option<i64>,
    new_state: Arc<StateMap>,
    members: Arc<head::Members>,
    redacted: Option<OwnedEventId>,
    appservices: crate::appservice::Queued,
}

/// Appends an authorised event to its room (the caller holds the room lock): its state
/// group, the forward extremities, the room's current state (resolved when the DAG forks),
/// then wakes the local users concerned.
pub(crate) async fn append(
    svc: &Services,
    pdu: &Pdu,
    rules: &RoomVersionRules,
    state_before: &Arc<StateMap>,
    group_before: Option<i64>,
    arrival: Arrival<'_>,
) -> Result<OwnedEventId> {
    let room = pdu.room_id.as_str();
    let head = head::load(svc, &pdu.room_id).await?;
    // Record what a state event replaces (prev_content for clients), outside the signed part.
    let replaced = match &pdu.state_key {
        Some(key) => state_pdu(svc, state_before, &pdu.kind.to_string().into(), key).await?,
        None => None,
    };
    // The event as stored (and as `get_pdu` reads it back).
    let stored = match &replaced {
        Some(old) => {
            let mut value: Value = serde_json::from_str(&pdu.json).map_err(|e| Error::Internal(e.into()))?;
            value["unsigned"] = json!({
                "replaces_state": old.event_id,
                "prev_content": old.content_value(),
                "prev_sender": old.sender,
            });
            Arc::new(
                Pdu::parse(pdu.event_id.clone(), &value.to_string(), Some(&pdu.room_id))
                    .map_err(|e| Error::Internal(anyhow::anyhow!(e)))?,
            )
        }
        None => Arc::new(pdu.clone()),
    };
    // Push rules are evaluated before the transaction (rulesets may be created on first use);
    // the counts are written with the event.
    let soft_failed = arrival.soft_failed;
    let notified = if soft_failed { Default::default() } else { crate::push::evaluate(svc, pdu, &head).await? };
    let interested_appservices =
        if soft_failed { Vec::new() } else { crate::appservice::interested_in_event(svc, pdu).await? };
    let destinations = match soft_failed {
        true => Vec::new(),
        false => crate::federation::sender::others(svc, arrival.destinations.iter().map(|s| &**s)),
    };
    let redaction = match (&pdu.kind, &pdu.redacts) {
        (TimelineEventType::RoomRedaction, Some(target)) if !soft_failed => Some(target),
        _ => None,
    };
    // The forward extremities this event does not replace.
    let remaining: Vec<&Arc<Pdu>> = head.prevs.iter().filter(|p| !pdu.prev_events.contains(&p.event_id)).collect();

    let relation = pdu.relation();
    let searchable = search::searchable(pdu).filter(|_| !soft_failed);
    let event_type = pdu.kind.to_string();
    // The script that writes the event, with its notifications and the queueing of its
    // deliveries when they fit in it (`complete`); with the event's state group.
    let script_for = |state_group: Option<i64>| {
        let entry = TimelineEntry {
            event: NewEvent {
                event_id: pdu.event_id.as_str(),
                room_id: room,
                stream_pos: None,
                depth: pdu.depth as i64,
                event_type: &event_type,
                state_key: pdu.state_key.as_deref(),
                sender: pdu.sender.as_str(),
                origin_server_ts: i64::from(pdu.origin_server_ts.0),
                json: &stored.json,
                state_group,
                relation: relation.as_ref().map(|(t, e)| (t.as_str(), e.as_str())),
                soft_failed,
            },
            txn: arrival.txn,
            search: searchable.as_ref().map(|(key, text)| (*key, text.as_str())),
            bump: !soft_failed && crate::sync::sliding::lists::bumps(&pdu.kind),
            replaces_extremities: (!soft_failed).then_some(&pdu.prev_events[..]),
        };
        let mut script = storage::events::append_script(svc.db.kind, &entry);
        let appservices = crate::appservice::queue_event_in_script(&mut script, pdu, &interested_appservices);
        let complete = script.has_room_for(notified.script_args() + destinations.len() + 2);
        if complete {
            crate::push::store_in_script(&mut script, pdu, &notified);
            crate::federation::sender::queue_pdu_in_script(&mut script, &destinations, &pdu.event_id);
        }
        (script, appservices, complete)
    };

    // Appends of all rooms share transactions (group commit, `storage::batch`). An append
    // that only adds to the timeline hands its script to the batch; one that must read back
    // what it writes (a state event's state group, a fork's resolution, a redaction) holds
    // the batch while it writes.
    let holds_batch = pdu.state_key.is_some()
        || (!soft_failed && (!remaining.is_empty() || redaction.is_some() || group_before != head.group));
    // Its script when it has no state key (the state group is the one before it); an append
    // whose deliveries do not all fit in it holds the batch too.
    let built = (!holds_batch).then(|| script_for(group_before));
    let Written { pos, group, state_after, new_group, new_state, members, redacted, appservices } = match built {
        Some((script, appservices, true)) => {
            let pos = match svc.db.append_in_batch(script).await {
                Ok(pos) => pos,
                Err(e) => {
                    // Whether a failed commit wrote anything is not known here: read the head
                    // again.
                    head::forget(svc, &pdu.room_id);
                    return Err(e.into());
                }
            };
            if soft_failed {
                return Ok(pdu.event_id.clone());
            }
            // The room's state and extremities (but for this event) are as they were.
            let state = Arc::clone(state_before);
            Written {
                pos,
                group: group_before,
                state_after: state.clone(),
                new_group: group_before,
                new_state: state,
                members: head.members.clone(),
                redacted: None,
                appservices,
            }
        }
        built => {
            let mut tx = svc.db.join_batch().await?;
            let (group, state_after) = match &pdu.state_key {
                Some(key) => {
                    let entry = ((pdu.kind.to_string(), key.clone()), pdu.event_id.to_string());
                    let delta: storage::state::StateRows = [entry.clone()].into_iter().collect();
                    let mut full = state::to_rows(state_before);
                    full.insert(entry.0, entry.1);
                    let id = storage::state::create_group(&mut tx, room, group_before, &delta, &full).await?;
                    let mut map = StateMap::clone(state_before);
                    map.insert((pdu.kind.to_string().into(), key.clone()), pdu.event_id.clone());
                    (Some(id), Arc::new(map))
                }
                None => (group_before, Arc::clone(state_before)),
            };
            let (script, appservices, complete) = built.unwrap_or_else(|| script_for(group));
            let pos = script.run(&mut tx).await?;
            if soft_failed {
                tx.commit().await?;
                return Ok(pdu.event_id.clone());
            }
            if !complete {
                crate::push::store(&mut tx, pdu, pos, &notified).await?;
                crate::federation::sender::queue_pdu_in(&mut tx, &destinations, &pdu.event_id).await?;
            }
            if pdu.kind == TimelineEventType::RoomMember
                && let Some(member) = pdu.state_key.as_deref()
                && UserId::parse(member).is_ok_and(|u| u.server_name().as_str() == svc.config.server_name)
            {
                // The room's own state now says where a local user stands in it.
                storage::rooms::delete_remote_membership(&mut tx, member, room).await?;
            }
            // The room's new current state: the state after this event when it is the only
            // forward extremity, else the resolution of the states after every extremity.
            let (new_group, new_state) = if remaining.is_empty() {
                (group, state_after.clone())
            } else {
                // Resolution may need this event, which is not committed yet.
                svc.rooms.cache_event(stored.clone());
                let mut states = vec![state_after.clone()];
                for extremity in &remaining {
                    let g =
                        storage::events::get(&svc.db, extremity.event_id.as_str()).await?.and_then(|e| e.state_group);
                    if let Some(g) = g {
                        states.push(state::load(svc, g).await?);
                    }
                }
                let resolved = resolve::resolve(svc, &head.version, &states).await?;
                let rows = state::to_rows(&resolved);
                let id = storage::state::create_group(&mut tx, room, None, &rows, &rows).await?;
                (Some(id), Arc::new(resolved))
            };
            let members = match new_group {
                Some(g) if new_group != head.group => {
                    set_current_state(svc, &mut tx, pdu, &head, g, &new_state).await?
                }
                _ => head.members.clone(),
            };
            let redacted = match redaction {
                Some(target) => apply_redaction(svc, &mut tx, pdu, target, rules).await?,
                None => None,
            };
            if let Err(e) = tx.commit().await {
                // Whether a failed commit wrote anything is not known here: read the head again.
                head::forget(svc, &pdu.room_id);
                return Err(e.into());
            }
            Written { pos, group, state_after, new_group, new_state, members, redacted, appservices }
        }
    };
    let mut prevs: Vec<Arc<Pdu>> = remaining.into_iter().cloned().collect();
    prevs.push(stored.clone());
    prevs.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    let (current_group, current_state) = match new_group {
        Some(g) => (Some(g), new_state.clone()),
        None => (head.group, head.state.clone()),
    };
    let new_head =
        head::Head { version: head.version.clone(), group: current_group, state: current_state, prevs, members };
    let notified_users = notified.users();
    // For the long-polls this append wakes (before the wake-up, so they find it).
    svc.notifier.recent.record(
        storage::events::StoredEvent {
            event_id: pdu.event_id.to_string(),
            room_id: room.to_owned(),
            json: stored.json.clone(),
            stream_pos: Some(pos),
            state_group: group,
            redacted_by: None,
            rejected: false,
            event_type,
            state_key: pdu.state_key.clone(),
        },
        relation.is_some(),
        notified.into_notifications(),
    );
    svc.rooms.cache_event(stored);
    if let Some(target) = &redacted {
        svc.rooms.forget_event(target);
    }
    if let Some(g) = group {
        state::remember(svc, g, state_after);
    }
    if let Some(g) = new_group {
        state::remember(svc, g, new_state);
    }
    let mut wake: Vec<OwnedUserId> =
        new_head.interested_users().filter_map(|u| OwnedUserId::try_from(u).ok()).collect();
    head::advance(svc, &pdu.room_id, new_head);
    appservices.wake(svc);
    crate::federation::sender::wake(svc, destinations).await;
    if let Some(event_id) = redacted {
        crate::cluster::publish(svc, crate::cluster::Message::EventChanged { event_id }).await;
    }
    if pdu.kind == TimelineEventType::RoomMember
        && let Some(target) = pdu.state_key.as_deref().and_then(|k| OwnedUserId::try_from(k).ok())
    {
        // Whoever is no longer in the room is no longer typing there.
        if pdu.content_str("membership").as_deref() != Some("join") && svc.typing.is_typing(&pdu.room_id, &target) {
            crate::cluster::publish_typing(svc, pdu.room_id.clone(), target.clone(), None).await?;
        }
        wake.push(target);
    }
    svc.notifier.notify(wake.iter().map(|u| &**u));
    // The event is committed: after a failed wake-up its pushes stay queued, and go with the
    // pushers' next wake-up or at the next start.
    if let Err(e) = crate::push::wake_pushers(svc, &notified_users).await {
        tracing::warn!(error = %e, "cannot wake the pushers of an event's notifications");
    }
    metrics::counter!("plexus_events_appended_total").increment(1);
    Ok(pdu.event_id.clone())
}

/// Stores a room's new current state (state group `group`), as changes from the head's: the
/// room's members after it.
async fn set_current_state(
    svc: &Services,
    tx: &mut storage::Tx,
    pdu: &Pdu,
    head: &head::Head,
    group: i64,
    new_state: &StateMap,
) -> Result<Arc<head::Members>> {
    let mut memberships = Vec::new();
    let mut changed = Vec::new();
    for (key, id) in new_state.iter() {
        if head.state.get(key) != Some(id) {
            let membership = match key.0 {
                // This event is not committed yet: read it from memory.
                StateEventType::RoomMember if *id == pdu.event_id => pdu.content_str("membership"),
                StateEventType::RoomMember => get_pdu(svc, id).await?.and_then(|p| p.content_str("membership")),
                _ => None,
            };
            memberships.push(membership);
            changed.push((key, Some(id)));
        }
    }
    for key in head.state.keys() {
        if !new_state.contains_key(key) {
            memberships.push(None);
            changed.push((key, None));
        }
    }
    let kinds: Vec<String> = changed.iter().map(|(k, _)| k.0.to_string()).collect();
    let changes: Vec<StateChange<'_>> = changed
        .iter()
        .zip(kinds.iter())
        .zip(memberships.iter())
        .map(|(((key, id), kind), membership)| StateChange {
            event_type: kind,
            state_key: &key.1,
            event_id: id.map(|i| i.as_str()),
            membership: membership.as_deref(),
        })
        .collect();
    storage::rooms::set_current_state(tx, pdu.room_id.as_str(), group, &changes).await?;
    Ok(Arc::new(head::apply_member_changes(&head.members, &changes)))
}

/// Prunes the redacted event in storage, if it is in the same room. Returns its ID.
async fn apply_redaction(
    svc: &Services,
    tx: &mut storage::Tx,
    redaction: &Pdu,
    target: &EventId,
    rules: &RoomVersionRules,
) -> Result<Option<OwnedEventId>> {
    let Some(original) = get_pdu(svc, target).await? else { return Ok(None) };
    if original.room_id != redaction.room_id {
        return Ok(None);
    }
    let object = original.canonical_object().map_err(anyhow::Error::msg)?;
    let because =
        ruma::canonical_json::RedactedBecause::from_json(redaction.canonical_object().map_err(anyhow::Error::msg)?);
    let mut pruned =
        ruma::canonical_json::redact(object, &rules.redaction, Some(because)).map_err(|e| Error::Internal(e.into()))?;
    if let Some(CanonicalJsonValue::Object(unsigned)) = pruned.get_mut("unsigned")
        && let Some(CanonicalJsonValue::Object(because)) = unsigned.get_mut("redacted_because")
    {
        // Clients see the redaction in the client format.
        because.insert("event_id".into(), CanonicalJsonValue::String(redaction.event_id.to_string()));
    }
    let json = ruma::canonical_json::to_canonical_value(&pruned).map_err(|e| Error::Internal(e.into()))?.to_string();
    storage::events::redact(tx, target.as_str(), &json, redaction.event_id.as_str()).await?;
    storage::search::remove(tx, target.as_str()).await?;
    Ok(Some(target.to_owned()))
}
