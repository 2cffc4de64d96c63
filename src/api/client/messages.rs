//! Reading history: /messages, /context, /relations, /threads.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::events::StateEventType;
use ruma::{OwnedEventId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::{parse_room_id, viewer, visible_event};
use super::v3;
use crate::AppState;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::http::extract::{Auth, Path, Query};
use crate::rooms::format::client_event;
use crate::rooms::pdu::Pdu;
use crate::rooms::{self, timeline};
use crate::storage;
use crate::sync::filter::{self, RoomEventFilter};
use crate::sync::token::SyncToken;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/rooms/{room_id}/messages"), get(messages))
        .route(v3!("/rooms/{room_id}/context/{event_id}"), get(context))
        .route("/_matrix/client/v1/rooms/{room_id}/relations/{event_id}", get(relations))
        .route("/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}", get(relations_of_type))
        .route(
            "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}/{rel_type}/{event_type}",
            get(relations_of_type_and_event_type),
        )
        .route("/_matrix/client/v1/rooms/{room_id}/threads", get(threads))
}

fn token(pos: i64) -> String {
    SyncToken::at(pos).to_string()
}

/// The newest position `me` may read in a room (their leave, if they left), and whether
/// they are joined now. 403 if they never were in it.
async fn reading_limit(state: &AppState, room_id: &RoomId, me: &Identity) -> Result<(i64, bool)> {
    rooms::room_version(state, room_id).await?;
    let current = rooms::current_state(state, room_id).await?;
    let member = rooms::state_pdu(state, &current, &StateEventType::RoomMember, me.user_id.as_str()).await?;
    let now = storage::current_stream_pos(&state.db).await?;
    match member.as_ref().and_then(|m| m.content_str("membership")).as_deref() {
        Some("join") => Ok((now, true)),
        Some("leave" | "ban") => {
            let member = member.ok_or_else(|| Error::forbidden("Not a member"))?;
            let pos = storage::events::get(&state.db, member.event_id.as_str()).await?.and_then(|e| e.stream_pos);
            Ok((pos.unwrap_or(0), false))
        }
        // Rooms whose history is world-readable can be read without joining.
        _ => {
            let world_readable = rooms::state_pdu(state, &current, &StateEventType::RoomHistoryVisibility, "")
                .await?
                .and_then(|p| p.content_str("history_visibility"))
                .as_deref()
                == Some("world_readable");
            if world_readable { Ok((now, false)) } else { Err(Error::forbidden("You are not a member of this room")) }
        }
    }
}

/// Member events of the senders of `events`, for lazy-loading clients.
async fn lazy_members(state: &AppState, room_id: &RoomId, events: &[Arc<Pdu>], me: &Identity) -> Result<Vec<Value>> {
    let senders: BTreeSet<&str> = events.iter().map(|e| e.sender.as_str()).collect();
    let current = rooms::current_state(state, room_id).await?;
    let mut out = Vec::new();
    for sender in senders {
        if let Some(pdu) = rooms::state_pdu(state, &current, &StateEventType::RoomMember, sender).await? {
            out.push(client_event(state, &pdu, Some(viewer(me)), false).await?);
        }
    }
    Ok(out)
}

async fn client_events(state: &AppState, events: &[Arc<Pdu>], me: &Identity) -> Result<Vec<Value>> {
    let events: Vec<&Pdu> = events.iter().map(|e| &**e).collect();
    rooms::format::client_events(state, &events, Some(viewer(me)), true).await
}

#[derive(Deserialize)]
struct MessagesQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    to: Option<String>,
    dir: String,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    filter: Option<String>,
}

async fn messages(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MessagesQuery>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let backwards = match q.dir.as_str() {
        "b" => true,
        "f" => false,
        _ => return Err(Error::invalid_param("dir must be b or f")),
    };
    let filter: RoomEventFilter = match &q.filter {
        Some(f) => filter::parse(f)?,
        None => RoomEventFilter::default(),
    };
    let limit = q.limit.or(filter.limit.map(|l| l as usize)).unwrap_or(10).clamp(1, 1000);
    let (readable_up_to, joined) = reading_limit(&state, &room_id, &me).await?;
    let from = match &q.from {
        Some(t) => SyncToken::parse_position(t)?,
        None if backwards => readable_up_to,
        None => 0,
    };
    let to = q.to.as_deref().map(SyncToken::parse_position).transpose()?;
    let (from, to) = if backwards {
        (from.min(readable_up_to), to)
    } else {
        (from, Some(to.unwrap_or(readable_up_to).min(readable_up_to)))
    };
    let mut page =
        timeline::paginate(&state, &room_id, &me.user_id, joined, from, to, backwards, limit, &filter).await?;
    // At the start of what this server has of a room it joined over federation: ask for more.
    if backwards && to.is_none() && page.next.is_none() && rooms::federation::backfill(&state, &room_id, limit).await? {
        page = timeline::paginate(&state, &room_id, &me.user_id, joined, from, to, backwards, limit, &filter).await?;
    }
    let mut body = json!({
        "chunk": client_events(&state, &page.events, &me).await?,
        "start": token(from),
    });
    if let Some(next) = page.next {
        body["end"] = json!(token(next));
    }
    if filter.lazy_load_members {
        body["state"] = json!(lazy_members(&state, &room_id, &page.events, &me).await?);
    }
    Ok(Json(body))
}

#[derive(Deserialize)]
struct ContextQuery {
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    filter: Option<String>,
}

async fn context(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<ContextQuery>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| Error::not_found("Event not found"))?;
    let (readable_up_to, joined) = reading_limit(&state, &room_id, &me).await?;
    let event = visible_event(&state, &me, &room_id, &event_id).await?;
    let pos = storage::events::get(&state.db, event_id.as_str())
        .await?
        .and_then(|e| e.stream_pos)
        .ok_or_else(|| Error::not_found("Event not found"))?;
    let filter: RoomEventFilter = match &q.filter {
        Some(f) => filter::parse(f)?,
        None => RoomEventFilter::default(),
    };
    let limit = q.limit.unwrap_or(10).min(100);
    let before_limit = limit / 2;
    let after_limit = limit - before_limit;
    let before = if before_limit > 0 {
        timeline::paginate(&state, &room_id, &me.user_id, joined, pos - 1, None, true, before_limit, &filter).await?
    } else {
        timeline::Page { events: vec![], positions: vec![], next: Some(pos - 1) }
    };
    let after = if after_limit > 0 {
        timeline::paginate(
            &state,
            &room_id,
            &me.user_id,
            joined,
            pos,
            Some(readable_up_to),
            false,
            after_limit,
            &filter,
        )
        .await?
    } else {
        timeline::Page { events: vec![], positions: vec![], next: Some(pos) }
    };
    let state_group = storage::events::get(&state.db, event_id.as_str()).await?.and_then(|e| e.state_group);
    let mut state_events = Vec::new();
    if let Some(group) = state_group {
        let map = rooms::state::load(&state, group).await?;
        let needed: BTreeSet<String> = before
            .events
            .iter()
            .chain(after.events.iter())
            .chain(std::iter::once(&event))
            .map(|e| e.sender.to_string())
            .collect();
        for ((kind, key), id) in map.iter() {
            if filter.lazy_load_members && *kind == StateEventType::RoomMember && !needed.contains(key) {
                continue;
            }
            if let Some(pdu) = rooms::get_pdu(&state, id).await? {
                state_events.push(client_event(&state, &pdu, Some(viewer(&me)), false).await?);
            }
        }
    }
    let start = before.next.unwrap_or(0);
    let end = after.next.unwrap_or(readable_up_to);
    Ok(Json(json!({
        "event": client_event(&state, &event, Some(viewer(&me)), true).await?,
        "events_before": client_events(&state, &before.events, &me).await?,
        "events_after": client_events(&state, &after.events, &me).await?,
        "state": state_events,
        "start": token(start),
        "end": token(end),
    })))
}

#[derive(Deserialize)]
struct RelationsQuery {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    recurse: bool,
}

async fn relations_common(
    state: &AppState,
    me: &Identity,
    room_id: &str,
    event_id: &str,
    rel_type: Option<&str>,
    event_type: Option<&str>,
    q: RelationsQuery,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| Error::not_found("Event not found"))?;
    let (_, joined) = reading_limit(state, &room_id, me).await?;
    visible_event(state, me, &room_id, &event_id).await?;
    let forwards = q.dir.as_deref() == Some("f");
    // Direct relations, and with `recurse` those of the related events too (threads of edits...).
    let mut found: Vec<(String, String, i64)> = storage::events::relations(&state.db, event_id.as_str()).await?;
    if q.recurse {
        let mut frontier: Vec<String> = found.iter().map(|(id, _, _)| id.clone()).collect();
        for _ in 0..3 {
            let mut next = vec![];
            for id in &frontier {
                let more = storage::events::relations(&state.db, id).await?;
                next.extend(more.iter().map(|(i, _, _)| i.clone()));
                found.extend(more);
            }
            frontier = next;
        }
        found.sort_by_key(|(_, _, pos)| *pos);
    }
    if !forwards {
        found.reverse();
    }
    let from = q
        .from
        .as_deref()
        .map(|t| t.parse::<usize>().map_err(|_| Error::invalid_param("Invalid from token")))
        .transpose()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let mut chunk = Vec::new();
    let mut next_batch = None;
    for (index, (id, kind, _)) in found.iter().enumerate().skip(from.unwrap_or(0)) {
        if rel_type.is_some_and(|r| !q.recurse && r != kind) {
            continue;
        }
        let id = OwnedEventId::try_from(id.as_str()).map_err(|e| Error::Internal(e.into()))?;
        let Some(pdu) = rooms::get_pdu(state, &id).await? else { continue };
        if pdu.room_id != room_id
            || event_type.is_some_and(|t| pdu.kind.to_string() != t)
            || (q.recurse && rel_type.is_some_and(|r| pdu.relation().is_none_or(|(k, _)| k != r)))
        {
            continue;
        }
        let stored = storage::events::get(&state.db, id.as_str()).await?.into_iter().collect();
        if rooms::visibility::filter(state, &me.user_id, joined, stored).await?.is_empty() {
            continue;
        }
        if chunk.len() == limit {
            next_batch = Some(index.to_string());
            break;
        }
        chunk.push(client_event(state, &pdu, Some(viewer(me)), false).await?);
    }
    let mut body = json!({ "chunk": chunk });
    if let Some(n) = next_batch {
        body["next_batch"] = json!(n);
    }
    if q.recurse {
        body["recursion_depth"] = json!(3);
    }
    Ok(Json(body))
}

async fn relations(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
    Query(q): Query<RelationsQuery>,
) -> Result<Json<Value>> {
    relations_common(&state, &me, &room_id, &event_id, None, None, q).await
}

async fn relations_of_type(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id, rel_type)): Path<(String, String, String)>,
    Query(q): Query<RelationsQuery>,
) -> Result<Json<Value>> {
    relations_common(&state, &me, &room_id, &event_id, Some(&rel_type), None, q).await
}

async fn relations_of_type_and_event_type(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id, rel_type, event_type)): Path<(String, String, String, String)>,
    Query(q): Query<RelationsQuery>,
) -> Result<Json<Value>> {
    relations_common(&state, &me, &room_id, &event_id, Some(&rel_type), Some(&event_type), q).await
}

#[derive(Deserialize)]
struct ThreadsQuery {
    #[serde(default)]
    include: Option<String>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    from: Option<String>,
}

async fn threads(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<ThreadsQuery>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let (_, joined) = reading_limit(&state, &room_id, &me).await?;
    let participated_only = match q.include.as_deref() {
        None | Some("all") => false,
        Some("participated") => true,
        Some(_) => return Err(Error::invalid_param("include must be all or participated")),
    };
    let from = q
        .from
        .as_deref()
        .map(|t| t.parse::<usize>().map_err(|_| Error::invalid_param("Invalid from token")))
        .transpose()?;
    let limit = q.limit.unwrap_or(50).clamp(1, 1000);
    let roots = storage::events::thread_roots(&state.db, room_id.as_str()).await?;
    let mut chunk = Vec::new();
    let mut next_batch = None;
    for (index, (root, _)) in roots.iter().enumerate().skip(from.unwrap_or(0)) {
        let root = OwnedEventId::try_from(root.as_str()).map_err(|e| Error::Internal(e.into()))?;
        let Some(stored) = storage::events::get(&state.db, root.as_str()).await? else { continue };
        if stored.room_id != room_id.as_str()
            || rooms::visibility::filter(&state, &me.user_id, joined, vec![stored]).await?.is_empty()
        {
            continue;
        }
        let Some(pdu) = rooms::get_pdu(&state, &root).await? else { continue };
        let event = client_event(&state, &pdu, Some(viewer(&me)), true).await?;
        let participated = event["unsigned"]["m.relations"]["m.thread"]["current_user_participated"] == json!(true);
        if participated_only && !participated {
            continue;
        }
        if chunk.len() == limit {
            next_batch = Some(index.to_string());
            break;
        }
        chunk.push(event);
    }
    let mut body = json!({ "chunk": chunk });
    if let Some(n) = next_batch {
        body["next_batch"] = json!(n);
    }
    Ok(Json(body))
}
