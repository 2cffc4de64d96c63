//! Simplified sliding sync (MSC4186): the rooms of the client's lists (sorted by recency,
//! filtered, cut to ranges) and subscriptions, each sent whole once and then only with
//! what changed, plus extensions. Held open until something changes, like `/sync`, on the
//! same notifier.
//!
//! The cost of a response follows what changed: the room list is one query over the
//! user's memberships and bump stamps; per-room work (timeline, state, counts) is done only
//! for rooms in range that changed since the client's position or are new to it.

pub mod connection;
pub mod extensions;
pub mod lists;
pub mod room;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use ruma::OwnedRoomId;
use ruma::api::client::sync::sync_events::v5::request::Extensions;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use self::connection::{Connection, Sent};
use self::lists::{Candidate, Filters, Lookups};
use self::room::{Known, RequiredState, RoomConfig};
use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::rooms::format::object;
use crate::storage;
use crate::sync::v2::MAX_TIMEOUT;

/// A request: `pos` and `timeout` come from the query string, the rest from the body.
pub struct Request {
    pub pos: Option<String>,
    pub timeout: Duration,
    pub body: Body,
}

/// The JSON body. Nothing is sticky: each request says all it wants.
#[derive(Debug, Default, Deserialize)]
pub struct Body {
    #[serde(default)]
    pub conn_id: Option<String>,
    #[serde(default)]
    pub lists: BTreeMap<String, ListConfig>,
    #[serde(default)]
    pub room_subscriptions: BTreeMap<OwnedRoomId, RoomRequest>,
    #[serde(default)]
    pub extensions: Extensions,
}

#[derive(Debug, Default, Deserialize)]
pub struct ListConfig {
    /// Inclusive index ranges; none means the whole list.
    #[serde(default)]
    pub ranges: Vec<(u64, u64)>,
    #[serde(flatten)]
    pub room: RoomRequest,
    #[serde(default)]
    pub filters: Option<Filters>,
}

#[derive(Debug, Default, Deserialize)]
pub struct RoomRequest {
    #[serde(default)]
    pub required_state: Vec<(String, String)>,
    #[serde(default)]
    pub timeline_limit: u64,
}

/// Most lists one request may have (MSC4186).
const MAX_LISTS: usize = 100;

/// Answers a sliding sync request, waiting up to the timeout for news when the client
/// continues a connection and there is none.
pub async fn sync(svc: &Services, me: &Identity, req: Request) -> Result<Value> {
    if req.body.lists.len() > MAX_LISTS {
        return Err(Error::invalid_param("Too many lists"));
    }
    if let Some((start, end)) = req.body.lists.values().flat_map(|l| &l.ranges).find(|(s, e)| s > e) {
        return Err(Error::invalid_param(format!("Invalid range [{start}, {end}]")));
    }
    // Subscribe before looking, so a change committed in between still wakes us.
    let mut wake = svc.notifier.subscribe(&me.user_id);
    let deadline = tokio::time::Instant::now() + req.timeout.min(MAX_TIMEOUT);
    let conn_id = req.body.conn_id.as_deref().unwrap_or_default();
    let conn = Connection::open(svc, me, conn_id, req.pos.as_deref()).await?;
    extensions::acknowledge_to_device(svc, me, &req.body.extensions).await?;
    let mut last_look = false;
    loop {
        wake.mark_unchanged();
        // Read the typing serial first: a change racing with this response is then sent
        // twice rather than never.
        let typing = svc.typing.serial();
        let stream = storage::current_stream_pos(&svc.db).await?;
        let (mut body, sent, news) = compute(svc, me, &req.body, &conn, stream, typing).await?;
        let stopping = svc.notifier.stopping();
        if news || last_look || stopping || conn.since.is_none() || tokio::time::Instant::now() >= deadline {
            body["pos"] = json!(conn.record(svc, &sent, stream, typing).await?);
            return Ok(body);
        }
        // Woken: look again. Timed out: one last look, then answer (empty if still nothing).
        last_look = !matches!(tokio::time::timeout_at(deadline, wake.changed()).await, Ok(Ok(())));
    }
}

/// The response for the connection's position up to `stream`: the body (without `pos`),
/// the rooms it sends and whether it carries anything new.
async fn compute(
    svc: &Services,
    me: &Identity,
    body: &Body,
    conn: &Connection,
    stream: i64,
    typing: u64,
) -> Result<(Value, Vec<Sent>, bool)> {
    let since = conn.since.map(|p| p.stream);
    let candidates = lists::candidates(svc, me, since, stream).await?;
    let by_id: HashMap<&str, &Candidate> = candidates.iter().map(|c| (c.room.room_id.as_str(), c)).collect();
    let mut lookups = Lookups::default();

    // Which rooms to consider, with the merged config of every list and subscription.
    let mut wanted: BTreeMap<&str, RoomConfig> = BTreeMap::new();
    let mut lists_out = Map::new();
    let mut list_rooms: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, list) in &body.lists {
        let mut matching = Vec::new();
        for candidate in &candidates {
            let allowed = match &list.filters {
                Some(f) => lookups.allows(svc, me, f, candidate).await?,
                None => true,
            };
            if allowed {
                matching.push(candidate);
            }
        }
        lists_out.insert(name.clone(), json!({ "count": matching.len() }));
        let picked: Vec<String> = lists::in_ranges(&list.ranges, matching.len())
            .into_iter()
            .map(|i| matching[i].room.room_id.clone())
            .collect();
        for room in &picked {
            merge(&mut wanted, by_id[room.as_str()].room.room_id.as_str(), &list.room);
        }
        list_rooms.insert(name.clone(), picked);
    }
    // Subscriptions to rooms the user has no membership in show nothing.
    let mut subscriptions = Vec::new();
    for (room, req) in &body.room_subscriptions {
        if let Some(candidate) = by_id.get(room.as_str()) {
            merge(&mut wanted, candidate.room.room_id.as_str(), req);
            subscriptions.push(room.to_string());
        }
    }

    // Rooms with new events since the oldest position any known room was sent up to: one
    // query over the stream, not one per room.
    let oldest = wanted.keys().filter_map(|r| conn.room_since(r)).min();
    let with_news: HashSet<String> = match oldest {
        Some(from) => storage::events::rooms_with_news(&svc.db, from, stream).await?.into_iter().collect(),
        None => HashSet::new(),
    };

    let mut rooms_out = Map::new();
    let mut sent = Vec::new();
    let mut initial = HashSet::new();
    for (room_id, config) in &wanted {
        let candidate = by_id[room_id];
        let stored_state = config.required_state.to_stored();
        let room_since = conn.room_since(room_id);
        let state_config_changed = conn.known(room_id).is_some_and(|s| s.required_state != stored_state);
        let membership_news = candidate.room.membership_pos.is_some_and(|p| room_since.is_some_and(|s| p > s));
        if let Some(s) = room_since
            && !state_config_changed
            && !membership_news
            && (s >= stream || !with_news.contains(*room_id))
        {
            continue;
        }
        let is_dm = lookups.is_dm(svc, me, candidate).await?;
        let known = Known { since: room_since, state_config_changed };
        if let Some(entry) = room::room(svc, me, candidate, known, stream, config, is_dm).await? {
            if room_since.is_none() {
                initial.insert(room_id.to_string());
            }
            rooms_out.insert(room_id.to_string(), entry);
            sent.push(Sent { room_id: room_id.to_string(), required_state: stored_state });
        }
    }

    let scope = extensions::Scope { lists: &list_rooms, subscriptions: &subscriptions, initial: &initial };
    let (extensions, extension_news) =
        extensions::compute(svc, me, &body.extensions, &scope, conn.since, stream, typing).await?;
    let news = !rooms_out.is_empty() || extension_news;
    let body = object([("lists", lists_out.into()), ("rooms", rooms_out.into()), ("extensions", extensions)]);
    Ok((body, sent, news))
}

/// Adds a list's or subscription's wishes for a room to what other lists asked.
fn merge<'a>(wanted: &mut BTreeMap<&'a str, RoomConfig>, room: &'a str, req: &RoomRequest) {
    let config = wanted
        .entry(room)
        .or_insert_with(|| RoomConfig { timeline_limit: 0, required_state: RequiredState::default() });
    config.timeline_limit = config.timeline_limit.max(req.timeline_limit);
    config.required_state.add(&req.required_state);
}
