//! Rooms: create, send, state, members, single events, context, redaction, joined rooms.

use std::sync::Arc;

use axum::extract::State;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::Identity;
use crate::admin;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path, Query};
use crate::rooms::format::{Viewer, client_event};
use crate::rooms::pdu::Pdu;
use crate::rooms::{self, Draft, create::CreateRoomRequest};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/createRoom"), post(create_room))
        .route(v3!("/rooms/{room_id}/send/{event_type}/{txn_id}"), put(send_message))
        .route(v3!("/rooms/{room_id}/state"), get(full_state))
        .route(v3!("/rooms/{room_id}/state/{event_type}"), get(get_state_empty_key).put(put_state_empty_key))
        .route(v3!("/rooms/{room_id}/state/{event_type}/"), get(get_state_empty_key).put(put_state_empty_key))
        .route(v3!("/rooms/{room_id}/state/{event_type}/{state_key}"), get(get_state).put(put_state))
        .route(v3!("/rooms/{room_id}/members"), get(members))
        .route(v3!("/rooms/{room_id}/joined_members"), get(joined_members))
        .route(v3!("/rooms/{room_id}/event/{event_id}"), get(event))
        .route(v3!("/rooms/{room_id}/redact/{event_id}/{txn_id}"), put(redact))
        .route(v3!("/joined_rooms"), get(joined_rooms))
}

pub fn parse_room_id(room_id: &str) -> Result<OwnedRoomId> {
    RoomId::parse(room_id).map_err(|_| Error::invalid_param(format!("Invalid room ID {room_id}")))
}

pub fn viewer(me: &Identity) -> Viewer<'_> {
    Viewer { user_id: me.user_id.as_str(), device_id: &me.device_id }
}

/// 403 unless the user is joined to the room (404 if the room is unknown).
pub async fn require_joined(state: &AppState, room_id: &RoomId, user: &UserId) -> Result<()> {
    rooms::room_version(state, room_id).await?;
    match storage::rooms::membership(&state.db, room_id.as_str(), user.as_str()).await?.as_deref() {
        Some("join") => Ok(()),
        _ => Err(Error::forbidden("You are not joined to this room")),
    }
}

/// What a user who may have left can still read: the room's state as of their leave, or
/// the current state if joined. 403 if they were never in the room.
pub async fn readable_state(state: &AppState, room_id: &RoomId, user: &UserId) -> Result<Arc<rooms::state::StateMap>> {
    let current = rooms::current_state(state, room_id).await?;
    let Some(member) = rooms::state_pdu(state, &current, &StateEventType::RoomMember, user.as_str()).await? else {
        return Err(Error::forbidden("You are not a member of this room"));
    };
    match member.content_str("membership").as_deref() {
        Some("join") => Ok(current),
        Some("leave" | "ban") => {
            // The state as it was when they left.
            let stored = storage::events::get(&state.db, member.event_id.as_str())
                .await?
                .ok_or_else(|| Error::Internal(anyhow::anyhow!("member event missing")))?;
            match stored.state_group {
                Some(g) => rooms::state::load(state, g).await,
                None => Err(Error::forbidden("You are not a member of this room")),
            }
        }
        _ => Err(Error::forbidden("You are not a member of this room")),
    }
}

async fn create_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(req): extract::Json<CreateRoomRequest>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    if let Some(alias) = req
        .room_alias_name
        .as_ref()
        .and_then(|name| ruma::OwnedRoomAliasId::try_from(format!("#{name}:{}", state.config.server_name)).ok())
    {
        state.appservices.check_alias_free(&alias, me.appservice.as_deref())?;
    }
    let room_id = rooms::create::create_room(&state, &me.user_id, req).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

async fn send_message(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type, txn_id)): Path<(String, String, String)>,
    extract::Json(content): extract::Json<Value>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let kind = TimelineEventType::from(event_type.as_str());
    if kind == TimelineEventType::RoomRedaction {
        return Err(Error::bad_json("Use the /redact endpoint to redact events"));
    }
    me.ensure_not_suspended()?;
    if me.shadow_banned {
        return Ok(Json(json!({ "event_id": admin::users::shadow_event_id() })));
    }
    let draft = Draft::message(kind, content);
    let event_id = rooms::send(&state, &room_id, &me.user_id, draft, Some((&me.device_id, &txn_id))).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

async fn full_state(State(state): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let map = readable_state(&state, &room_id, &me.user_id).await?;
    let mut events = Vec::with_capacity(map.len());
    for id in map.values() {
        if let Some(pdu) = rooms::get_pdu(&state, id).await? {
            events.push(client_event(&state, &pdu, Some(viewer(&me)), false).await?);
        }
    }
    Ok(Json(Value::Array(events)))
}

#[derive(Deserialize)]
struct StateQuery {
    #[serde(default)]
    format: Option<String>,
}

async fn get_state_event(
    state: &AppState,
    me: &Identity,
    room_id: &str,
    event_type: &str,
    state_key: &str,
    format: Option<&str>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    let map = readable_state(state, &room_id, &me.user_id).await?;
    let pdu = rooms::state_pdu(state, &map, &event_type.into(), state_key)
        .await?
        .ok_or_else(|| Error::not_found("State event not found"))?;
    if format == Some("event") {
        return Ok(Json(client_event(state, &pdu, Some(viewer(me)), false).await?));
    }
    Ok(Json(pdu.content_value()))
}

async fn get_state(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    Query(q): Query<StateQuery>,
) -> Result<Json<Value>> {
    get_state_event(&state, &me, &room_id, &event_type, &state_key, q.format.as_deref()).await
}

async fn get_state_empty_key(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type)): Path<(String, String)>,
    Query(q): Query<StateQuery>,
) -> Result<Json<Value>> {
    get_state_event(&state, &me, &room_id, &event_type, "", q.format.as_deref()).await
}

async fn put_state_event(
    state: &AppState,
    me: &Identity,
    room_id: &str,
    event_type: &str,
    state_key: String,
    content: Value,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    let kind = TimelineEventType::from(event_type);
    if kind == TimelineEventType::RoomCreate {
        return Err(Error::bad_json("Cannot send m.room.create"));
    }
    if kind == TimelineEventType::RoomCanonicalAlias && state_key.is_empty() {
        super::directory::check_canonical_alias(state, &room_id, &content).await?;
    }
    me.ensure_not_suspended()?;
    if me.shadow_banned {
        return Ok(Json(json!({ "event_id": admin::users::shadow_event_id() })));
    }
    let event_id = rooms::send(state, &room_id, &me.user_id, Draft::state(kind, state_key, content), None).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

async fn put_state(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type, state_key)): Path<(String, String, String)>,
    extract::Json(content): extract::Json<Value>,
) -> Result<Json<Value>> {
    put_state_event(&state, &me, &room_id, &event_type, state_key, content).await
}

async fn put_state_empty_key(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_type)): Path<(String, String)>,
    extract::Json(content): extract::Json<Value>,
) -> Result<Json<Value>> {
    put_state_event(&state, &me, &room_id, &event_type, String::new(), content).await
}

#[derive(Deserialize)]
struct MembersQuery {
    #[serde(default)]
    membership: Option<String>,
    #[serde(default)]
    not_membership: Option<String>,
    #[serde(default)]
    at: Option<String>,
}

async fn members(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    Query(q): Query<MembersQuery>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let mut map = readable_state(&state, &room_id, &me.user_id).await?;
    if let Some(at) = &q.at {
        let token = crate::sync::token::SyncToken::parse(at)?;
        if let Some(Some(group)) =
            storage::events::group_at_or_before(&state.db, room_id.as_str(), token.stream).await?
        {
            map = rooms::state::load(&state, group).await?;
        }
    }
    let mut chunk = vec![];
    for ((kind, _), id) in map.iter() {
        if *kind != StateEventType::RoomMember {
            continue;
        }
        let Some(pdu) = rooms::get_pdu(&state, id).await? else { continue };
        let membership = pdu.content_str("membership").unwrap_or_default();
        if q.membership.as_ref().is_some_and(|m| *m != membership)
            || q.not_membership.as_ref().is_some_and(|m| *m == membership)
        {
            continue;
        }
        chunk.push(client_event(&state, &pdu, Some(viewer(&me)), false).await?);
    }
    Ok(Json(json!({ "chunk": chunk })))
}

async fn joined_members(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    require_joined(&state, &room_id, &me.user_id).await?;
    let map = rooms::current_state(&state, &room_id).await?;
    let mut joined = serde_json::Map::new();
    for ((kind, key), id) in map.iter() {
        if *kind != StateEventType::RoomMember {
            continue;
        }
        let Some(pdu) = rooms::get_pdu(&state, id).await? else { continue };
        if pdu.content_str("membership").as_deref() == Some("join") {
            joined.insert(
                key.clone(),
                json!({ "display_name": pdu.content_str("displayname"), "avatar_url": pdu.content_str("avatar_url") }),
            );
        }
    }
    Ok(Json(json!({ "joined": joined })))
}

/// Loads an event of a room that `me` may see (404 otherwise, as Synapse).
pub async fn visible_event(state: &AppState, me: &Identity, room_id: &RoomId, event_id: &EventId) -> Result<Arc<Pdu>> {
    let not_found = || Error::not_found("Event not found");
    let stored = storage::events::get(&state.db, event_id.as_str()).await?.ok_or_else(not_found)?;
    if stored.room_id != room_id.as_str() || stored.rejected {
        return Err(not_found());
    }
    let joined =
        storage::rooms::membership(&state.db, room_id.as_str(), me.user_id.as_str()).await?.as_deref() == Some("join");
    let visible = rooms::visibility::filter(state, &me.user_id, joined, vec![stored]).await?;
    if visible.is_empty() {
        return Err(not_found());
    }
    rooms::get_pdu(state, event_id).await?.ok_or_else(not_found)
}

async fn event(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let event_id = OwnedEventId::try_from(event_id).map_err(|_| Error::not_found("Event not found"))?;
    rooms::room_version(&state, &room_id).await?;
    let pdu = visible_event(&state, &me, &room_id, &event_id).await?;
    Ok(Json(client_event(&state, &pdu, Some(viewer(&me)), true).await?))
}

#[derive(Deserialize)]
struct RedactBody {
    #[serde(default)]
    reason: Option<String>,
}

async fn redact(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, event_id, txn_id)): Path<(String, String, String)>,
    extract::Json(body): extract::Json<RedactBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let target = OwnedEventId::try_from(event_id).map_err(|_| Error::invalid_param("Invalid event ID"))?;
    require_joined(&state, &room_id, &me.user_id).await?;
    // Only the sender or a user with the redact power level may redact (checked here: the
    // auth rules of later room versions leave it to the servers applying redactions).
    if let Some(original) = rooms::get_pdu(&state, &target).await?
        && original.room_id == room_id
        && original.sender != me.user_id
    {
        // A suspended user may redact their own events only (spec "Account suspension").
        me.ensure_not_suspended()?;
        let current = rooms::current_state(&state, &room_id).await?;
        if !rooms::power::has_level(&state, &current, &me.user_id, rooms::power::Action::Redact).await? {
            return Err(Error::forbidden("You may not redact other users' events"));
        }
    }
    let mut content = json!({ "redacts": target });
    if let Some(reason) = body.reason {
        content["reason"] = json!(reason);
    }
    let draft = Draft::message(TimelineEventType::RoomRedaction, content);
    let event_id = rooms::send(&state, &room_id, &me.user_id, draft, Some((&me.device_id, &txn_id))).await?;
    Ok(Json(json!({ "event_id": event_id })))
}

async fn joined_rooms(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let rooms = storage::rooms::rooms_of_user(&state.db, me.user_id.as_str(), "join").await?;
    Ok(Json(json!({ "joined_rooms": rooms })))
}
