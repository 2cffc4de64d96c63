//! `GET /sync` (client-server API v2): what changed for a user between two stream
//! positions, held open until something does when the client long-polls.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};

use ruma::events::StateEventType;
use ruma::{OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde_json::{Map, Value, json};

use super::filter::{Filter, RoomEventFilter};
use super::recent::Span;
use super::token::SyncToken;
use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::rooms::format::{Viewer, client_event, client_events, object};
use crate::rooms::pdu::Pdu;
use crate::rooms::state::StateMap;
use crate::rooms::{self, timeline};
use crate::storage;
use crate::storage::sync::NewsKinds;

/// Most to-device messages one sync delivers.
pub(crate) const TO_DEVICE_LIMIT: i64 = 100;

/// Longest long-poll a client may ask for.
pub(crate) const MAX_TIMEOUT: Duration = Duration::from_secs(120);

/// Member events already sent to a device (lazy-loading sends each once).
#[derive(Default)]
pub struct LazyLoadCache {
    sent: Mutex<HashMap<(String, String, OwnedRoomId), HashSet<OwnedEventId>>>,
}

impl LazyLoadCache {
    pub(crate) fn reset(&self, user: &str, device: &str) {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).retain(|(u, d, _), _| !(u == user && d == device));
    }

    pub(crate) fn reset_all(&self) {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Keeps the member events not yet sent, and remembers them as sent.
    fn unsent(&self, user: &str, device: &str, room: &RoomId, events: Vec<Arc<Pdu>>) -> Vec<Arc<Pdu>> {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let set = sent.entry((user.to_owned(), device.to_owned(), room.to_owned())).or_default();
        events.into_iter().filter(|e| set.insert(e.event_id.clone())).collect()
    }
}

pub struct SyncRequest {
    pub since: Option<SyncToken>,
    pub timeout: Duration,
    pub full_state: bool,
    pub filter: Arc<Filter>,
}

/// Answers a sync, waiting up to the timeout for news when there is none.
pub async fn sync(svc: &Services, me: &Identity, req: SyncRequest) -> Result<Value> {
    // Subscribe before looking, so a change committed in between still wakes us.
    let mut wake = svc.notifier.subscribe(&me.user_id);
    let deadline = tokio::time::Instant::now() + req.timeout.min(MAX_TIMEOUT);
    if req.since.is_none() || req.full_state {
        let reset = crate::cluster::Message::LazyLoadReset { user: me.user_id.clone(), device: me.device_id.clone() };
        crate::cluster::publish(svc, reset).await;
    }
    // The client has the to-device messages the token says it was given: drop them.
    if let Some(since) = req.since {
        crate::e2ee::to_device::acknowledge(svc, me, since.to_device_pos()).await?;
    }
    let mut timed_out = false;
    loop {
        // The wake-ups seen, then the typing serial, then the stream position: a change racing
        // with this sync is then sent twice rather than never.
        let seen = *wake.borrow_and_update();
        let typing = svc.typing.serial();
        let must_answer = timed_out || req.since.is_none() || req.full_state || svc.notifier.stopping();
        // Everything a sync carries is ordered by the stream or the typing serial: when
        // neither moved past the token (and no to-device batch was cut short), there is
        // nothing to compute until a wake-up. A long-poll that comes back with the token a
        // sync of this process answered, with no wake-up since, knows it without reading.
        let quiet = |s: &SyncToken| s.typing == typing && s.to_device.is_none();
        let known_quiet = !must_answer
            && req.since.is_some_and(|s| quiet(&s) && svc.notifier.nothing_after(&me.user_id, seen, s.stream));
        let now = match known_quiet {
            true => None,
            false => Some(SyncToken { stream: storage::current_stream_pos(&svc.db).await?, typing, to_device: None }),
        };
        if let Some(now) = now
            && (must_answer || !req.since.is_some_and(|s| s.stream == now.stream && quiet(&s)))
        {
            let (body, has_news) = compute(svc, me, &req, now).await?;
            if has_news || must_answer {
                svc.notifier.answered(&me.user_id, seen, now.stream);
                return Ok(body);
            }
        }
        match tokio::time::timeout_at(deadline, wake.changed()).await {
            Ok(Ok(())) => continue,
            _ => timed_out = true,
        }
    }
}

fn token(pos: i64) -> String {
    SyncToken::at(pos).to_string()
}

/// The sync response for (since, now], and whether it carries anything new.
async fn compute(svc: &Services, me: &Identity, req: &SyncRequest, mut now: SyncToken) -> Result<(Value, bool)> {
    let since = req.since.map(|s| s.stream);
    if since.is_some_and(|s| s > now.stream) {
        return Err(Error::invalid_param("The since token is from the future"));
    }
    let user = me.user_id.as_str();
    let room_filter = &req.filter.room;
    let mut news = false;

    // A window of nothing but events this process appended (a long-poll woken by a send)
    // is known from memory; a to-device batch cut short leaves messages before the window,
    // and `full_state` asks for every room.
    let span = match req.since {
        Some(s) if s.to_device.is_none() && !req.full_state => svc.notifier.recent.span(s.stream, now.stream),
        _ => None,
    };
    // One statement says which kinds of news there are; only their queries run.
    let kinds = match (since, &span) {
        (_, Some(span)) => span.kinds(user),
        (Some(s), None) => storage::sync::news_kinds(&svc.db, user, &me.device_id, s, now.stream).await?,
        (None, None) => NewsKinds::ALL,
    };
    // Rooms whose timeline or the user's membership changed since the token.
    let (changed_rooms, membership_changed): (HashSet<String>, HashSet<String>) = match (since, &span) {
        (_, Some(span)) => (span.rooms(), span.membership_changes(user)),
        (Some(s), None) => (
            storage::events::rooms_with_news(&svc.db, s, now.stream).await?.into_iter().collect(),
            match kinds.own_membership {
                true => storage::events::membership_changes(&svc.db, user, s, now.stream).await?.into_iter().collect(),
                false => HashSet::new(),
            },
        ),
        (None, None) => (HashSet::new(), HashSet::new()),
    };
    // A typing serial from before a restart is meaningless: resend all typing state.
    let typing_since = req.since.map(|s| if s.typing > now.typing { 0 } else { s.typing });
    let typing_changed: HashSet<OwnedRoomId> = match typing_since {
        Some(t) => svc.typing.changed_since(t).into_iter().collect(),
        None => HashSet::new(),
    };
    let room_data = match since {
        _ if !kinds.account_data => vec![],
        Some(s) => storage::account_data::changed_since(&svc.db, user, s).await?,
        None => storage::account_data::changed_since(&svc.db, user, -1).await?,
    };

    // Receipts are read only in the rooms that have new ones (one query, not one per room);
    // a window known from memory has none.
    let receipt_rooms = match since {
        Some(s) if span.is_none() && room_filter.ephemeral.allows_type("m.receipt") => {
            storage::receipts::rooms_changed(&svc.db, s, now.stream).await?.into_iter().collect()
        }
        _ => HashSet::new(),
    };
    let mut changes = Changes {
        rooms: changed_rooms,
        memberships: membership_changed,
        typing: typing_changed,
        receipts: receipt_rooms,
        latest_receipts: None,
        account_data: room_data,
    };

    // One query for every membership of the user, instead of one per membership kind; when
    // only the timelines of some rooms changed, just the user's membership in those, from
    // their heads.
    let memberships = match &span {
        Some(_) if changes.memberships.is_empty() => {
            // Typing takes no stream position: its rooms have news too.
            let mut rooms = changes.rooms.clone();
            rooms.extend(changes.typing.iter().map(|r| r.to_string()));
            memberships_in(svc, &me.user_id, &rooms).await?
        }
        _ => storage::rooms::memberships_of_user(&svc.db, user).await?,
    };
    let rooms_with = |wanted: &str| -> Vec<String> {
        memberships.iter().filter(|(_, m)| m == wanted).map(|(r, _)| r.clone()).collect()
    };
    let joined: Vec<String> = rooms_with("join").into_iter().filter(|r| room_filter.allows_room(r)).collect();
    // A full sync shows the current receipts of every room: one statement for all of them.
    if since.is_none() && room_filter.ephemeral.allows_type("m.receipt") {
        let ids: Vec<&str> = joined.iter().map(String::as_str).collect();
        changes.latest_receipts = Some(storage::receipts::latest_in_rooms(&svc.db, &ids, user, now.stream).await?);
    }
    let room_news = |room| joined_room(svc, me, req, room, since, now.stream, &changes);
    let joined: Vec<JoinedRoom> = match span {
        // A window known from memory asks the database nothing: one room after the other,
        // without a task for each.
        Some(_) => {
            let mut rooms = Vec::new();
            for room in joined {
                rooms.extend(room_news(room).await?);
            }
            rooms
        }
        // Rooms are independent: their queries overlap on the connection pool.
        None => futures::stream::iter(joined)
            .map(room_news)
            .buffered(ROOMS_IN_PARALLEL)
            .try_collect::<Vec<Option<JoinedRoom>>>()
            .await?
            .into_iter()
            .flatten()
            .collect(),
    };
    news |= !joined.is_empty();
    let join = joined_rooms_json(svc, me, &req.filter, joined, now.stream, span.as_ref()).await?;

    let mut invite = Map::new();
    let mut knock = Map::new();
    for (membership, out) in [("invite", &mut invite), ("knock", &mut knock)] {
        for room in rooms_with(membership) {
            if !room_filter.allows_room(&room) || (since.is_some() && !changes.memberships.contains(&room)) {
                continue;
            }
            let room_id = RoomId::parse(&room).map_err(|e| Error::Internal(e.into()))?;
            let stripped = stripped_state(svc, &room_id, &me.user_id).await?;
            let key = if membership == "invite" { "invite_state" } else { "knock_state" };
            out.insert(room, json!({ key: { "events": stripped } }));
            news = true;
        }
    }

    // Memberships in rooms this server is not in (invites and knocks over federation, and
    // their rejection), unless the room's own state has since said more.
    let mut leave = Map::new();
    let remote = match kinds.remote_memberships {
        true => storage::rooms::remote_memberships_of_user(&svc.db, user).await?,
        false => vec![],
    };
    for row in remote {
        let superseded = memberships.iter().any(|(r, m)| *r == row.room_id && m != "leave");
        if superseded || !room_filter.allows_room(&row.room_id) || since.is_some_and(|s| row.stream_pos <= s) {
            continue;
        }
        let stripped: Value = serde_json::from_str(&row.stripped_state).unwrap_or_else(|_| json!([]));
        match row.membership.as_str() {
            "invite" => {
                invite.insert(row.room_id.clone(), json!({ "invite_state": { "events": stripped } }));
            }
            "knock" => {
                knock.insert(row.room_id.clone(), json!({ "knock_state": { "events": stripped } }));
            }
            _ if since.is_some() || room_filter.include_leave => {
                let event = rooms::federation::remote_membership_event(&row)?;
                let event = client_event(svc, &event, None, true).await?;
                leave.insert(
                    row.room_id.clone(),
                    json!({
                        "timeline": { "events": [event], "limited": false },
                        "state": { "events": [] },
                        "account_data": { "events": [] },
                    }),
                );
            }
            _ => continue,
        }
        news = true;
    }
    let include_leave = room_filter.include_leave || since.is_some();
    if include_leave {
        for membership in ["leave", "ban"] {
            for room in rooms_with(membership) {
                let changed = since.is_none_or(|_| changes.memberships.contains(&room));
                if !room_filter.allows_room(&room) || !changed {
                    continue;
                }
                let room_id = RoomId::parse(&room).map_err(|e| Error::Internal(e.into()))?;
                leave.insert(room, left_room(svc, me, &room_id, since, &req.filter).await?);
                news = true;
            }
        }
    }

    let global: Vec<Value> = changes
        .account_data
        .iter()
        .filter(|(r, t, _)| r.is_empty() && req.filter.account_data.allows_type(t))
        .map(|(_, t, c)| account_data_event(t, c))
        .collect();
    if since.is_some() && !global.is_empty() {
        news = true;
    }
    let presence = match kinds.presence && svc.presence.enabled() {
        true => presence(svc, me, since, now.stream, &req.filter.presence).await?,
        false => vec![],
    };
    if since.is_some() && !presence.is_empty() {
        news = true;
    }
    // To-device messages after those already acknowledged, at most TO_DEVICE_LIMIT; when cut
    // short, the token remembers where delivery stopped.
    let (to_device, last) = match kinds.to_device {
        true => {
            let up_to = (i64::MIN, now.stream);
            crate::e2ee::to_device::pending_events(&svc.db, user, &me.device_id, up_to, TO_DEVICE_LIMIT).await?
        }
        false => (vec![], None),
    };
    if to_device.len() as i64 == TO_DEVICE_LIMIT {
        now.to_device = last;
    }
    if !to_device.is_empty() {
        news = true;
    } else {
        // Nothing waits up to this answer's position: the sync from its token need not look.
        svc.to_device_none_waiting.learn(me, now.stream);
    }
    let (changed, left) = match since {
        Some(s) if kinds.device_lists || kinds.any_membership => {
            device_list_changes(svc, &me.user_id, s, now.stream).await?
        }
        _ => (vec![], vec![]),
    };
    if !changed.is_empty() || !left.is_empty() {
        news = true;
    }
    let keys = crate::e2ee::keys::device_key_status(svc, &me.user_id, &me.device_id).await?;
    let (otk_counts, fallback) = &*keys;
    let body = object([
        ("next_batch", now.to_string().into()),
        (
            "rooms",
            object([
                ("join", join.into()),
                ("invite", invite.into()),
                ("knock", knock.into()),
                ("leave", leave.into()),
            ]),
        ),
        ("account_data", events(global)),
        ("presence", events(presence)),
        ("to_device", events(to_device)),
        ("device_lists", object([("changed", changed.into()), ("left", left.into())])),
        ("device_one_time_keys_count", json!(otk_counts)),
        ("device_unused_fallback_key_types", json!(fallback)),
    ]);
    Ok((body, news))
}

/// The user's memberships in these rooms (current state), as `memberships_of_user` lists
/// them.
async fn memberships_in(svc: &Services, user: &UserId, rooms: &HashSet<String>) -> Result<Vec<(String, String)>> {
    let mut memberships = Vec::new();
    for room in rooms {
        let room_id = RoomId::parse(room).map_err(|e| Error::Internal(e.into()))?;
        if let Some(head) = rooms::head::find(svc, &room_id).await?
            && let Some(member) = head.members.get(user.as_str())
        {
            memberships.push((room.clone(), member.membership.clone()));
        }
    }
    Ok(memberships)
}

/// The state entries that differ between two state maps (those of `to`).
pub(crate) fn state_delta(from: &StateMap, to: &StateMap) -> Vec<OwnedEventId> {
    to.iter().filter(|(k, v)| from.get(*k) != Some(*v)).map(|(_, v)| v.clone()).collect()
}

/// The state after the last event of a room at or before `pos`; before the first one, the
/// state the room had when this server joined it over federation (empty for rooms created
/// here).
pub(crate) async fn state_at(svc: &Services, room_id: &RoomId, pos: i64) -> Result<Arc<StateMap>> {
    let room = room_id.as_str();
    let last = match svc.notifier.recent.group_at_or_before(room, pos) {
        Some(group) => Some(group),
        None => storage::events::group_at_or_before(&svc.db, room, pos).await?,
    };
    let group = match last {
        Some(group) => group,
        None => storage::rooms::base_state_group(&svc.db, room).await?,
    };
    match group {
        Some(g) => rooms::state::load(svc, g).await,
        None => Ok(Arc::default()),
    }
}

pub(crate) async fn to_client(svc: &Services, me: &Identity, events: &[Arc<Pdu>]) -> Result<Vec<Value>> {
    let events: Vec<&Pdu> = events.iter().map(|e| &**e).collect();
    client_events(svc, &events, Some(viewer(me)), true).await
}

fn viewer(me: &Identity) -> Viewer<'_> {
    Viewer { user_id: me.user_id.as_str(), device_id: &me.device_id }
}

/// Which part of a room's timeline a sync covers.
struct Window {
    /// None: from the start (a full sync of the room).
    after: Option<i64>,
    up_to: i64,
    /// Whether the user is joined (which opens `shared` history).
    joined: bool,
    /// Send the whole state even on an incremental sync.
    full_state: bool,
}

/// The timeline and state of one room in a window.
async fn room_timeline(
    svc: &Services,
    me: &Identity,
    room_id: &RoomId,
    window: Window,
    filter: &Filter,
) -> Result<(Vec<Arc<Pdu>>, bool, String, Vec<Arc<Pdu>>)> {
    let Window { after, up_to, joined, full_state } = window;
    let tl_filter: &RoomEventFilter = &filter.room.timeline;
    let limit = tl_filter.limit.unwrap_or(10).clamp(1, 1000) as usize;
    let page = timeline::paginate(svc, room_id, &me.user_id, joined, up_to, after, true, limit, tl_filter).await?;
    let mut events = page.events;
    events.reverse();
    let limited = page.next.is_some();
    // Positions come newest first, as the events did.
    let start = page.positions.last().map_or(up_to, |oldest| oldest - 1);
    let prev_batch = token(page.next.unwrap_or(start));

    // State: all of it at the start of the timeline for a full sync; for an incremental
    // one, what changed between `after` and the start of the timeline (only when gappy).
    let state_at_start = state_at(svc, room_id, start).await?;
    let ids: Vec<OwnedEventId> = match after {
        None => state_at_start.values().cloned().collect(),
        Some(_) if full_state => state_at_start.values().cloned().collect(),
        Some(a) if limited => state_delta(&*state_at(svc, room_id, a).await?, &state_at_start),
        Some(_) => vec![],
    };
    let state_filter = &filter.room.state;
    let lazy = state_filter.lazy_load_members;
    let senders: BTreeSet<&str> =
        events.iter().map(|e| e.sender.as_str()).chain(std::iter::once(me.user_id.as_str())).collect();
    let mut state = Vec::new();
    for id in ids {
        let Some(pdu) = rooms::get_pdu(svc, &id).await? else { continue };
        if !state_filter.allows(&pdu) {
            continue;
        }
        let is_member = pdu.kind == ruma::events::TimelineEventType::RoomMember;
        if lazy && is_member && !pdu.state_key.as_deref().is_some_and(|k| senders.contains(k)) {
            continue;
        }
        state.push(pdu);
    }
    if lazy {
        // Members of timeline senders the client has not been sent yet, even without a gap.
        for sender in &senders {
            if let Some(pdu) = rooms::state_pdu(svc, &state_at_start, &StateEventType::RoomMember, sender).await?
                && !state.iter().any(|s| s.event_id == pdu.event_id)
                && !events.iter().any(|e| e.event_id == pdu.event_id)
            {
                state.push(pdu);
            }
        }
        if !state_filter.include_redundant_members {
            let (members, others): (Vec<_>, Vec<_>) =
                state.into_iter().partition(|p| p.kind == ruma::events::TimelineEventType::RoomMember);
            let mut kept = others;
            kept.extend(svc.lazy_load.unsent(me.user_id.as_str(), &me.device_id, room_id, members));
            state = kept;
        }
    }
    Ok((events, limited, prev_batch, state))
}

/// How many joined rooms a sync works on at once.
const ROOMS_IN_PARALLEL: usize = 8;

/// What changed for the user between the sync token and now (empty for a full sync).
struct Changes {
    /// Rooms with timeline events.
    rooms: HashSet<String>,
    /// Rooms where the user's membership changed.
    memberships: HashSet<String>,
    typing: HashSet<OwnedRoomId>,
    /// Rooms with new receipts.
    receipts: HashSet<String>,
    /// The current receipts of the joined rooms that have any, read at once for a full sync.
    latest_receipts: Option<HashMap<String, Map<String, Value>>>,
    /// The user's account data: (room or "" for global, type, content).
    account_data: Vec<(String, String, String)>,
}

/// A joined room's part of a sync, before its events are formatted (all rooms at once).
struct JoinedRoom {
    room: String,
    timeline: Vec<Arc<Pdu>>,
    limited: bool,
    prev_batch: String,
    state: Vec<Arc<Pdu>>,
    account_data: Vec<Value>,
    ephemeral: Vec<Value>,
    /// Membership may have changed: the room's summary is sent.
    membership_news: bool,
}

/// A joined room's news since the token (all of it when the room is new to the client),
/// or None when there is none.
async fn joined_room(
    svc: &Services,
    me: &Identity,
    req: &SyncRequest,
    room: String,
    since: Option<i64>,
    up_to: i64,
    changes: &Changes,
) -> Result<Option<JoinedRoom>> {
    let room_filter = &req.filter.room;
    let room_id = RoomId::parse(&room).map_err(|e| Error::Internal(e.into()))?;
    let account_data: Vec<Value> = changes
        .account_data
        .iter()
        .filter(|(r, t, _)| *r == room && room_filter.account_data.allows_type(t))
        .map(|(_, t, c)| account_data_event(t, c))
        .collect();
    // A room joined since the token is sent whole. `full_state` sends every room with all
    // its state, but the timeline still starts at the token (as the spec says).
    let whole = since.is_none() || changes.memberships.contains(&room);
    let full = whole || req.full_state;
    let after = if whole { None } else { since };
    let ephemeral = ephemeral(svc, me, &room_id, after, up_to, changes, &room_filter.ephemeral).await?;
    if !full && !changes.rooms.contains(&room) && account_data.is_empty() && ephemeral.is_empty() {
        return Ok(None);
    }
    let window = Window { after, up_to, joined: true, full_state: req.full_state };
    let (timeline, limited, prev_batch, state) = room_timeline(svc, me, &room_id, window, &req.filter).await?;
    if !full && timeline.is_empty() && account_data.is_empty() && ephemeral.is_empty() {
        return Ok(None);
    }
    let membership_news =
        full || timeline.iter().chain(state.iter()).any(|e| e.kind == ruma::events::TimelineEventType::RoomMember);
    Ok(Some(JoinedRoom { room, timeline, limited, prev_batch, state, account_data, ephemeral, membership_news }))
}

/// The `rooms.join` object: every room's events formatted in one batch, and the unread
/// counts of all rooms read in one query. Events of a window known from memory (`span`)
/// that nothing in it relates to have no aggregations to read.
async fn joined_rooms_json(
    svc: &Services,
    me: &Identity,
    filter: &Filter,
    rooms: Vec<JoinedRoom>,
    up_to: i64,
    span: Option<&Span>,
) -> Result<Map<String, Value>> {
    let room_ids: Vec<&str> = rooms.iter().map(|r| r.room.as_str()).collect();
    let unread = crate::push::unread_counts_by_room(svc, me, &room_ids, up_to, span).await?;
    let summarised: Vec<&str> = rooms.iter().filter(|r| r.membership_news).map(|r| r.room.as_str()).collect();
    let mut members: HashMap<String, Vec<(String, String)>> = HashMap::new();
    for (room, user, membership) in storage::rooms::joined_and_invited(&svc.db, &summarised).await? {
        members.entry(room).or_default().push((user, membership));
    }
    let pdus: Vec<&Pdu> = rooms.iter().flat_map(|r| r.timeline.iter().chain(r.state.iter())).map(|e| &**e).collect();
    let bundle = !span.is_some_and(|s| s.nothing_to_bundle(pdus.iter().map(|p| p.event_id.as_str())));
    let mut formatted = client_events(svc, &pdus, Some(viewer(me)), bundle).await?.into_iter();
    let per_thread = filter.room.timeline.unread_thread_notifications;
    let mut join = Map::new();
    for room in rooms {
        let timeline: Vec<Value> = formatted.by_ref().take(room.timeline.len()).collect();
        let state: Vec<Value> = formatted.by_ref().take(room.state.len()).collect();
        let mut entry = object([
            (
                "timeline",
                object([
                    ("events", timeline.into()),
                    ("limited", room.limited.into()),
                    ("prev_batch", room.prev_batch.into()),
                ]),
            ),
            ("state", events(state)),
            ("account_data", events(room.account_data)),
            ("ephemeral", events(room.ephemeral)),
        ]);
        crate::push::add_unread_counts(unread.get(&room.room).map_or(&[][..], Vec::as_slice), per_thread, &mut entry);
        if room.membership_news {
            entry["summary"] = summary(members.get(&room.room).map_or(&[][..], Vec::as_slice), &me.user_id);
        }
        join.insert(room.room, entry);
    }
    Ok(join)
}

/// Users whose devices the client should re-fetch (`changed`: their device list changed, or
/// they newly share a room) and those it no longer shares any room with (`left`), for
/// positions in (`since`, `up_to`].
pub async fn device_list_changes(
    svc: &Services,
    me: &UserId,
    since: i64,
    up_to: i64,
) -> Result<(Vec<String>, Vec<String>)> {
    let sharing: HashSet<String> =
        storage::rooms::users_sharing_rooms(&svc.db, me.as_str()).await?.into_iter().collect();
    let mut changed: BTreeSet<String> = storage::device_lists::changed_users(&svc.db, since, up_to)
        .await?
        .into_iter()
        .filter(|u| sharing.contains(u))
        .collect();
    let mut left = BTreeSet::new();
    // Membership changes in rooms the user is or was in: new room-mates, or room-mates gone.
    for (user, membership) in storage::events::member_changes_in_rooms_of(&svc.db, me.as_str(), since, up_to).await? {
        if user == me.as_str() {
            continue;
        }
        if membership == "join" && sharing.contains(&user) {
            changed.insert(user);
        } else if !sharing.contains(&user) {
            left.insert(user);
        }
    }
    // Rooms the user joined: all their members are new room-mates.
    for room in storage::events::membership_changes(&svc.db, me.as_str(), since, up_to).await? {
        if storage::rooms::membership(&svc.db, &room, me.as_str()).await?.as_deref() == Some("join") {
            for (user, membership, _) in storage::rooms::members(&svc.db, &room).await? {
                if membership == "join" && user != me.as_str() {
                    changed.insert(user);
                }
            }
        } else {
            for (user, _, _) in storage::rooms::members(&svc.db, &room).await? {
                if !sharing.contains(&user) && user != me.as_str() {
                    left.insert(user);
                }
            }
        }
    }
    left.retain(|u| !changed.contains(u));
    Ok((changed.into_iter().collect(), left.into_iter().collect()))
}

/// Typing and receipts of a joined room: all current ones for a full sync (`after` None),
/// else the changes since the token.
async fn ephemeral(
    svc: &Services,
    me: &Identity,
    room_id: &RoomId,
    after: Option<i64>,
    up_to: i64,
    changes: &Changes,
    filter: &RoomEventFilter,
) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    if filter.allows_type("m.typing") && (after.is_none() || changes.typing.contains(room_id)) {
        let typing = svc.typing.typing_in(room_id);
        if after.is_some() || !typing.is_empty() {
            events.push(json!({ "type": "m.typing", "content": { "user_ids": typing } }));
        }
    }
    if (after.is_none() || changes.receipts.contains(room_id.as_str())) && filter.allows_type("m.receipt") {
        let viewer = me.user_id.as_str();
        let receipts = match (after, &changes.latest_receipts) {
            (Some(a), _) => storage::receipts::in_range(&svc.db, room_id.as_str(), viewer, a, up_to).await?,
            (None, Some(latest)) => latest.get(room_id.as_str()).cloned().unwrap_or_default(),
            // A room the user joined since an incremental sync's token.
            (None, None) => storage::receipts::latest(&svc.db, room_id.as_str(), viewer, up_to).await?,
        };
        if !receipts.is_empty() {
            events.push(object([("type", "m.receipt".into()), ("content", receipts.into())]));
        }
    }
    Ok(events)
}

/// Presence of the users who share a room with `me` (and their own), changed since the token.
async fn presence(
    svc: &Services,
    me: &Identity,
    since: Option<i64>,
    up_to: i64,
    filter: &RoomEventFilter,
) -> Result<Vec<Value>> {
    if !filter.allows_type("m.presence") {
        return Ok(vec![]);
    }
    let mut users = storage::rooms::users_sharing_rooms(&svc.db, me.user_id.as_str()).await?;
    if !users.iter().any(|u| u == me.user_id.as_str()) {
        users.push(me.user_id.to_string());
    }
    let now_ms = storage::now_ms();
    let changes = storage::presence::changes(&svc.db, &users, since.unwrap_or(i64::MIN), up_to).await?;
    // Several changes of one user: the latest wins.
    let mut latest: HashMap<String, Value> = HashMap::new();
    for p in changes {
        if filter.allows_sender(&p.user_id) {
            let event = json!({ "type": "m.presence", "sender": p.user_id, "content": p.content(now_ms) });
            latest.insert(p.user_id.clone(), event);
        }
    }
    Ok(latest.into_values().collect())
}

/// `{"events": [...]}`, the shape of each list of events in a sync answer.
fn events(events: Vec<Value>) -> Value {
    object([("events", events.into())])
}

/// An account data event, from its type and stored content.
pub(crate) fn account_data_event(kind: &str, content: &str) -> Value {
    object([("type", kind.into()), ("content", serde_json::from_str::<Value>(content).unwrap_or_default())])
}

/// Heroes and member counts (sent when membership may have changed), from the room's joined
/// and invited members sorted by user ID.
fn summary(members: &[(String, String)], me: &UserId) -> Value {
    let joined = members.iter().filter(|(_, m)| m == "join").count();
    let invited = members.iter().filter(|(_, m)| m == "invite").count();
    let heroes: Vec<&str> = members.iter().filter(|(u, _)| u != me.as_str()).map(|(u, _)| u.as_str()).take(5).collect();
    json!({ "m.heroes": heroes, "m.joined_member_count": joined, "m.invited_member_count": invited })
}

/// A room the user left: its timeline up to the leave.
async fn left_room(
    svc: &Services,
    me: &Identity,
    room_id: &RoomId,
    since: Option<i64>,
    filter: &Filter,
) -> Result<Value> {
    let current = rooms::current_state(svc, room_id).await?;
    let leave_pos = match rooms::state_pdu(svc, &current, &StateEventType::RoomMember, me.user_id.as_str()).await? {
        Some(m) => storage::events::get(&svc.db, m.event_id.as_str()).await?.and_then(|e| e.stream_pos).unwrap_or(0),
        None => 0,
    };
    let (timeline, limited, prev_batch, state) = room_timeline(
        svc,
        me,
        room_id,
        Window { after: since, up_to: leave_pos, joined: false, full_state: false },
        filter,
    )
    .await?;
    Ok(object([
        (
            "timeline",
            object([
                ("events", to_client(svc, me, &timeline).await?.into()),
                ("limited", limited.into()),
                ("prev_batch", prev_batch.into()),
            ]),
        ),
        ("state", events(to_client(svc, me, &state).await?)),
        ("account_data", events(vec![])),
    ]))
}

/// Stripped state for an invite or knock: the room's identity and the user's membership.
pub async fn stripped_state(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<Vec<Value>> {
    rooms::stripped_state(svc, &*rooms::current_state(svc, room_id).await?, user).await
}
