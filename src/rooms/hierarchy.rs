//! The space hierarchy: a depth-first walk over `m.space.child` events from a space,
//! listing the rooms a user may see with their summaries. Rooms this server is not in are
//! asked of the servers their child event names (`GET /_matrix/federation/v1/hierarchy`).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use axum::http::Method;
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, OwnedServerName, RoomId, ServerName, UserId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::summary::{self, Summary};
use super::{current_state, get_pdu};
use crate::Services;
use crate::error::Result;
use crate::federation::client;

/// Children read per space, as Synapse bounds them.
const MAX_CHILDREN: usize = 50;
/// How long a remote server may take to describe a space.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to walk: the spec's `suggested_only` and `max_depth`, and a page (`skip` rooms
/// already returned, at most `limit` more).
pub struct Walk {
    pub suggested_only: bool,
    pub max_depth: usize,
    pub skip: usize,
    pub limit: usize,
}

/// One page of the hierarchy: the rooms with their `children_state`, and whether rooms
/// remain after it.
pub struct Page {
    pub rooms: Vec<Value>,
    pub more: bool,
}

/// A space child, from its stripped `m.space.child` event.
struct Child {
    room_id: OwnedRoomId,
    via: Vec<OwnedServerName>,
    order: Option<String>,
    ts: u64,
    stripped: Value,
}

/// A room of the walk: its summary and its children.
struct Node {
    summary: Summary,
    children: Vec<Child>,
}

/// A child from a stripped child event (with `origin_server_ts`), if it is one: a room ID
/// as state key and a non-empty `via` (and `suggested` when only those are wanted).
fn child_of(stripped: Value, suggested_only: bool) -> Option<Child> {
    let room_id = RoomId::parse(stripped.get("state_key")?.as_str()?).ok()?;
    let content = stripped.get("content")?;
    let via: Vec<OwnedServerName> =
        content.get("via")?.as_array()?.iter().filter_map(|v| ServerName::parse(v.as_str()?).ok()).collect();
    let suggested = content.get("suggested").and_then(Value::as_bool) == Some(true);
    if via.is_empty() || (suggested_only && !suggested) {
        return None;
    }
    // A valid `order` has at most 50 printable ASCII characters.
    let order = content
        .get("order")
        .and_then(Value::as_str)
        .filter(|o| o.len() <= 50 && o.bytes().all(|b| (0x20..=0x7e).contains(&b)))
        .map(str::to_owned);
    let ts = stripped.get("origin_server_ts")?.as_u64()?;
    Some(Child { room_id, via, order, ts, stripped })
}

/// Children in the spec's order: valid `order` first (by code points), then by the child
/// event's timestamp, then by room ID; at most `MAX_CHILDREN`.
fn ordered(mut children: Vec<Child>) -> Vec<Child> {
    children.sort_by(|a, b| {
        let order_key = |c: &Child| (c.order.is_none(), c.order.clone());
        order_key(a).cmp(&order_key(b)).then(a.ts.cmp(&b.ts)).then_with(|| a.room_id.cmp(&b.room_id))
    });
    children.truncate(MAX_CHILDREN);
    children
}

/// The stripped child events of a room this server knows.
async fn local_children_state(svc: &Services, room_id: &RoomId) -> Result<Vec<Value>> {
    let state = current_state(svc, room_id).await?;
    let mut events = Vec::new();
    for ((kind, _), event_id) in state.iter() {
        if *kind == StateEventType::SpaceChild
            && let Some(pdu) = get_pdu(svc, event_id).await?
        {
            let mut stripped = pdu.to_stripped();
            stripped["origin_server_ts"] = json!(u64::from(pdu.origin_server_ts.get()));
            events.push(stripped);
        }
    }
    Ok(events)
}

/// A room this server knows, with its children.
async fn local_node(svc: &Services, room_id: &RoomId, suggested_only: bool) -> Result<Option<Node>> {
    let Some(summary) = summary::load(svc, room_id).await? else { return Ok(None) };
    let events = local_children_state(svc, room_id).await?;
    let children = ordered(events.into_iter().filter_map(|e| child_of(e, suggested_only)).collect());
    Ok(Some(Node { summary, children }))
}

/// The federation answer for a space: the room, and its children's summaries.
#[derive(Deserialize)]
struct RemoteHierarchy {
    room: Map<String, Value>,
    #[serde(default)]
    children: Vec<Map<String, Value>>,
}

/// A room of another server, asked of the servers in `via` in turn; the summaries of its
/// children are kept in `known` so that leaf rooms need no request of their own.
async fn remote_node(
    svc: &Services,
    room_id: &RoomId,
    via: &[OwnedServerName],
    suggested_only: bool,
    known: &mut HashMap<OwnedRoomId, Map<String, Value>>,
) -> Option<Node> {
    let is_space = |fields: &Map<String, Value>| fields.get("room_type").and_then(Value::as_str) == Some("m.space");
    if let Some(fields) = known.get(room_id).filter(|f| !is_space(f)) {
        let summary = Summary { room_id: room_id.to_owned(), fields: fields.clone() };
        return Some(Node { summary, children: Vec::new() });
    }
    let path = format!(
        "/_matrix/federation/v1/hierarchy/{}?suggested_only={suggested_only}",
        client::encode(room_id.as_str())
    );
    for server in via.iter().filter(|s| s.as_str() != svc.config.server_name) {
        let answer =
            client::request_with_timeout::<RemoteHierarchy>(svc, server, Method::GET, &path, None, REMOTE_TIMEOUT);
        let mut remote = match answer.await {
            Ok(remote) if remote.room.get("room_id").and_then(Value::as_str) == Some(room_id.as_str()) => remote,
            Ok(_) => continue,
            Err(e) => {
                tracing::debug!(%server, %room_id, error = %e, "space hierarchy request failed");
                continue;
            }
        };
        for child in remote.children {
            if let Some(id) = child.get("room_id").and_then(Value::as_str).and_then(|id| RoomId::parse(id).ok()) {
                known.insert(id, child);
            }
        }
        let events = match remote.room.remove("children_state") {
            Some(Value::Array(events)) => events,
            _ => Vec::new(),
        };
        let children = ordered(events.into_iter().filter_map(|e| child_of(e, suggested_only)).collect());
        return Some(Node { summary: Summary { room_id: room_id.to_owned(), fields: remote.room }, children });
    }
    known
        .remove(room_id)
        .map(|fields| Node { summary: Summary { room_id: room_id.to_owned(), fields }, children: Vec::new() })
}

/// Walks the hierarchy under `root` for `user`. The root must be visible to the user
/// (the caller checks). Rooms no server could describe are skipped.
pub async fn walk(svc: &Services, user: &UserId, root: &RoomId, walk: &Walk) -> Result<Page> {
    let mut stack: Vec<(OwnedRoomId, Vec<OwnedServerName>, usize)> = vec![(root.to_owned(), Vec::new(), 0)];
    let mut seen = HashSet::new();
    let mut known = HashMap::new();
    let mut listed = 0;
    let mut rooms = Vec::new();
    while let Some((room_id, via, depth)) = stack.pop() {
        if rooms.len() == walk.limit {
            return Ok(Page { rooms, more: true });
        }
        if !seen.insert(room_id.clone()) {
            continue;
        }
        let node = match local_node(svc, &room_id, walk.suggested_only).await? {
            Some(node) => Some(node),
            None => remote_node(svc, &room_id, &via, walk.suggested_only, &mut known).await,
        };
        let Some(Node { summary, children }) = node else { continue };
        if room_id != root && !summary.visible_to(svc, Some(user)).await? {
            continue;
        }
        if depth < walk.max_depth {
            stack.extend(children.iter().rev().map(|c| (c.room_id.clone(), c.via.clone(), depth + 1)));
        }
        listed += 1;
        if listed > walk.skip {
            let mut entry = summary.fields;
            entry.insert("children_state".into(), children.into_iter().map(|c| c.stripped).collect());
            rooms.push(Value::Object(entry));
        }
    }
    Ok(Page { rooms, more: false })
}

/// The federation hierarchy of a space for `server`: the room with its children events,
/// the summaries of the children the server may see, and the IDs of those it may not.
/// `None` when the room is unknown here or hidden from that server.
pub async fn for_server(
    svc: &Services,
    server: &ServerName,
    room_id: &RoomId,
    suggested_only: bool,
) -> Result<Option<Value>> {
    let Some(node) = local_node(svc, room_id, suggested_only).await? else { return Ok(None) };
    if !node.summary.visible_to_server(svc, server).await? {
        return Ok(None);
    }
    let mut children = Vec::new();
    let mut inaccessible = Vec::new();
    for child in &node.children {
        match summary::load(svc, &child.room_id).await? {
            Some(summary) if summary.visible_to_server(svc, server).await? => {
                children.push(Value::Object(summary.fields))
            }
            Some(_) => inaccessible.push(json!(child.room_id)),
            // Rooms this server is not in are left for the asking server to find.
            None => {}
        }
    }
    let mut room = node.summary.fields;
    room.insert("children_state".into(), node.children.into_iter().map(|c| c.stripped).collect());
    Ok(Some(json!({ "room": room, "children": children, "inaccessible_children": inaccessible })))
}
