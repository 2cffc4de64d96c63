//! Server-side search: `POST /search` over room events.

use std::collections::{BTreeMap, BTreeSet};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ruma::RoomId;
use ruma::events::StateEventType;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::rooms::viewer;
use super::v3;
use crate::AppState;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Query};
use crate::rooms::format::client_event;
use crate::rooms::search::{self, Found, Order};
use crate::rooms::{self, timeline};
use crate::storage;
use crate::sync::filter::RoomEventFilter;
use crate::sync::token::SyncToken;

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/search"), post(search_events))
}

#[derive(Deserialize)]
struct SearchQuery {
    #[serde(default)]
    next_batch: Option<String>,
}

#[derive(Deserialize)]
struct SearchBody {
    search_categories: Categories,
}

#[derive(Deserialize)]
struct Categories {
    #[serde(default)]
    room_events: Option<RoomEvents>,
}

#[derive(Deserialize)]
struct RoomEvents {
    search_term: String,
    #[serde(default)]
    keys: Vec<String>,
    #[serde(default)]
    filter: RoomEventFilter,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    event_context: Option<EventContext>,
    #[serde(default)]
    include_state: bool,
    #[serde(default)]
    groupings: Option<Groupings>,
}

#[derive(Deserialize)]
struct EventContext {
    #[serde(default = "five")]
    before_limit: usize,
    #[serde(default = "five")]
    after_limit: usize,
    #[serde(default)]
    include_profile: bool,
}

fn five() -> usize {
    5
}

#[derive(Deserialize)]
struct Groupings {
    #[serde(default)]
    group_by: Vec<GroupBy>,
}

#[derive(Deserialize)]
struct GroupBy {
    key: String,
}

/// Results per page unless the filter says otherwise (Synapse's default).
const DEFAULT_LIMIT: usize = 10;
/// The most context events on either side of a result.
const MAX_CONTEXT: usize = 50;

async fn search_events(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(q): Query<SearchQuery>,
    extract::Json(body): extract::Json<SearchBody>,
) -> Result<Json<Value>> {
    let Some(criteria) = body.search_categories.room_events else {
        return Ok(Json(json!({ "search_categories": {} })));
    };
    for key in &criteria.keys {
        if !["content.body", "content.name", "content.topic"].contains(&key.as_str()) {
            return Err(Error::invalid_param(format!("Unknown search key {key}")));
        }
    }
    let order = match criteria.order_by.as_deref() {
        None | Some("rank") => Order::Rank,
        Some("recent") => Order::Recent,
        Some(other) => return Err(Error::invalid_param(format!("Unknown order_by {other}"))),
    };
    let mut group_by_room = false;
    let mut group_by_sender = false;
    for g in criteria.groupings.iter().flat_map(|g| &g.group_by) {
        match g.key.as_str() {
            "room_id" => group_by_room = true,
            "sender" => group_by_sender = true,
            other => return Err(Error::invalid_param(format!("Unknown group_by key {other}"))),
        }
    }
    let from = match q.next_batch.as_deref() {
        Some(t) => t.parse::<usize>().map_err(|_| Error::invalid_param("Invalid next_batch"))?,
        None => 0,
    };
    let limit = criteria.filter.limit.map_or(DEFAULT_LIMIT, |l| l.clamp(1, 100) as usize);

    let query = search::Query { term: &criteria.search_term, keys: &criteria.keys, filter: &criteria.filter, order };
    let found = search::search(&state, &me.user_id, &query).await?;
    let count = found.len();
    let page: Vec<&Found> = found.iter().skip(from).take(limit).collect();
    let next_batch = (from + page.len() < count).then(|| (from + page.len()).to_string());

    let mut results = Vec::with_capacity(page.len());
    for f in &page {
        let mut result = json!({
            "rank": f.rank,
            "result": client_event(&state, &f.pdu, Some(viewer(&me)), true).await?,
        });
        if let Some(ctx) = &criteria.event_context {
            result["context"] = context(&state, &me, f, ctx).await?;
        }
        results.push(result);
    }
    let mut room_events = json!({
        "count": count,
        "highlights": search::words(&criteria.search_term),
        "results": results,
    });
    if let Some(next) = &next_batch {
        room_events["next_batch"] = json!(next);
    }
    let mut groups = Map::new();
    if group_by_room {
        groups.insert("room_id".into(), group(&page, |f| f.pdu.room_id.to_string(), next_batch.as_deref()));
    }
    if group_by_sender {
        groups.insert("sender".into(), group(&page, |f| f.pdu.sender.to_string(), next_batch.as_deref()));
    }
    if !groups.is_empty() {
        room_events["groups"] = Value::Object(groups);
    }
    if criteria.include_state {
        let rooms: BTreeSet<&RoomId> = page.iter().map(|f| &*f.pdu.room_id).collect();
        let mut states = Map::new();
        for room in rooms {
            let current = rooms::current_state(&state, room).await?;
            let mut events = Vec::with_capacity(current.len());
            for id in current.values() {
                if let Some(pdu) = rooms::get_pdu(&state, id).await? {
                    events.push(client_event(&state, &pdu, Some(viewer(&me)), false).await?);
                }
            }
            states.insert(room.to_string(), Value::Array(events));
        }
        room_events["state"] = Value::Object(states);
    }
    Ok(Json(json!({ "search_categories": { "room_events": room_events } })))
}

/// The page's results grouped by a key, groups ordered by their best result.
fn group(page: &[&Found], key: impl Fn(&Found) -> String, next_batch: Option<&str>) -> Value {
    let mut groups: BTreeMap<String, (usize, Vec<String>)> = BTreeMap::new();
    for (i, f) in page.iter().enumerate() {
        let entry = groups.entry(key(f)).or_insert((i, Vec::new()));
        entry.1.push(f.pdu.event_id.to_string());
    }
    let mut out = Map::new();
    for (k, (order, ids)) in groups {
        let mut g = json!({ "order": order, "results": ids });
        if let Some(next) = next_batch {
            g["next_batch"] = json!(next);
        }
        out.insert(k, g);
    }
    Value::Object(out)
}

/// The events around a result the user may see, with the senders' profiles on request.
async fn context(state: &AppState, me: &Identity, f: &Found, ctx: &EventContext) -> Result<Value> {
    let room_id = &f.pdu.room_id;
    let open = RoomEventFilter::default();
    let now = storage::current_stream_pos(&state.db).await?;
    let before_limit = ctx.before_limit.min(MAX_CONTEXT);
    let after_limit = ctx.after_limit.min(MAX_CONTEXT);
    let before = if before_limit > 0 {
        timeline::paginate(state, room_id, &me.user_id, true, f.stream_pos - 1, None, true, before_limit, &open).await?
    } else {
        timeline::Page { events: Vec::new(), positions: Vec::new(), next: Some(f.stream_pos - 1) }
    };
    let after = if after_limit > 0 {
        timeline::paginate(state, room_id, &me.user_id, true, f.stream_pos, Some(now), false, after_limit, &open)
            .await?
    } else {
        timeline::Page { events: Vec::new(), positions: Vec::new(), next: Some(f.stream_pos) }
    };
    let mut events_before = Vec::with_capacity(before.events.len());
    for e in &before.events {
        events_before.push(client_event(state, e, Some(viewer(me)), false).await?);
    }
    let mut events_after = Vec::with_capacity(after.events.len());
    for e in &after.events {
        events_after.push(client_event(state, e, Some(viewer(me)), false).await?);
    }
    let mut context = json!({
        "start": SyncToken::at(before.next.unwrap_or(0)).to_string(),
        "end": SyncToken::at(after.next.unwrap_or(now)).to_string(),
        "events_before": events_before,
        "events_after": events_after,
    });
    if ctx.include_profile {
        let current = rooms::current_state(state, room_id).await?;
        let senders: BTreeSet<String> = before
            .events
            .iter()
            .chain(after.events.iter())
            .chain(std::iter::once(&f.pdu))
            .map(|e| e.sender.to_string())
            .collect();
        let mut profiles = Map::new();
        for sender in senders {
            let member = rooms::state_pdu(state, &current, &StateEventType::RoomMember, &sender).await?;
            let content = member.map(|m| m.content_value()).unwrap_or_default();
            let mut profile = Map::new();
            for field in ["displayname", "avatar_url"] {
                if let Some(v) = content.get(field).filter(|v| v.is_string()) {
                    profile.insert(field.into(), v.clone());
                }
            }
            profiles.insert(sender, Value::Object(profile));
        }
        context["profile_info"] = Value::Object(profiles);
    }
    Ok(context)
}
