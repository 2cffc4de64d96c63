//! Receipts (`m.read`, `m.read.private`, threaded or not) and the read marker (`m.fully_read`).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ruma::{EventId, RoomId};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::rooms::{parse_room_id, require_joined, visible_event};
use super::v3;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::rooms::receipts::{READ, READ_PRIVATE};
use crate::rooms::{self, pdu::Pdu};
use crate::storage;
use crate::{AppState, Services};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/rooms/{room_id}/receipt/{receipt_type}/{event_id}"), post(post_receipt))
        .route(v3!("/rooms/{room_id}/read_markers"), post(read_markers))
}

const FULLY_READ: &str = "m.fully_read";

/// An event of the room that `me` may see, or 404.
async fn target_event(
    state: &AppState,
    me: &Identity,
    room_id: &RoomId,
    event_id: &str,
) -> Result<std::sync::Arc<Pdu>> {
    let event_id = EventId::parse(event_id).map_err(|_| Error::not_found("Event not found"))?;
    visible_event(state, me, room_id, &event_id).await
}

async fn post_receipt(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((room_id, receipt_type, event_id)): Path<(String, String, String)>,
    extract::Json(body): extract::Json<Map<String, Value>>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    if ![READ, READ_PRIVATE, FULLY_READ].contains(&receipt_type.as_str()) {
        return Err(Error::invalid_param(format!("Unknown receipt type {receipt_type}")));
    }
    let thread_id = match body.get("thread_id") {
        None => None,
        Some(Value::String(t)) if !t.is_empty() => Some(t.as_str()),
        Some(_) => return Err(Error::invalid_param("thread_id field must be a non-empty string")),
    };
    if receipt_type == FULLY_READ && thread_id.is_some() {
        return Err(Error::invalid_param("m.fully_read cannot be threaded"));
    }
    require_joined(&state, &room_id, &me.user_id).await?;
    let event = target_event(&state, &me, &room_id, &event_id).await?;
    if receipt_type == FULLY_READ {
        set_fully_read(&state, &me, &room_id, &event).await?;
    } else {
        if let Some(thread) = thread_id {
            check_thread(&state, &event, thread).await?;
        }
        set_receipt(&state, &me, &room_id, &receipt_type, thread_id, &event).await?;
    }
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct ReadMarkers {
    #[serde(default, rename = "m.fully_read")]
    fully_read: Option<String>,
    #[serde(default, rename = "m.read")]
    read: Option<String>,
    #[serde(default, rename = "m.read.private")]
    read_private: Option<String>,
}

async fn read_markers(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<ReadMarkers>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    require_joined(&state, &room_id, &me.user_id).await?;
    // Every event is checked before anything is stored.
    let fully_read = match &body.fully_read {
        Some(id) => Some(target_event(&state, &me, &room_id, id).await?),
        None => None,
    };
    let mut receipts = Vec::new();
    for (receipt_type, id) in [(READ, &body.read), (READ_PRIVATE, &body.read_private)] {
        if let Some(id) = id {
            receipts.push((receipt_type, target_event(&state, &me, &room_id, id).await?));
        }
    }
    if let Some(event) = fully_read {
        set_fully_read(&state, &me, &room_id, &event).await?;
    }
    for (receipt_type, event) in receipts {
        set_receipt(&state, &me, &room_id, receipt_type, None, &event).await?;
    }
    Ok(Json(json!({})))
}

/// 400 unless the event is in the thread the receipt names (`main` or a thread root).
async fn check_thread(svc: &Services, event: &Pdu, thread_id: &str) -> Result<()> {
    let thread = rooms::thread_of(svc, event).await?;
    let in_thread = match thread_id {
        "main" => thread.is_none(),
        root => event.event_id.as_str() == root || thread.is_some_and(|t| t.as_str() == root),
    };
    if !in_thread {
        return Err(Error::invalid_param(format!("Event {} is not in thread {thread_id}", event.event_id)));
    }
    Ok(())
}

async fn set_receipt(
    svc: &Services,
    me: &Identity,
    room_id: &RoomId,
    receipt_type: &str,
    thread_id: Option<&str>,
    event: &Pdu,
) -> Result<()> {
    rooms::receipts::put(svc, room_id, &me.user_id, receipt_type, thread_id, &event.event_id, storage::now_ms()).await
}

/// Moves the read marker (room account data `m.fully_read`) forward to `event`.
async fn set_fully_read(svc: &Services, me: &Identity, room_id: &RoomId, event: &Pdu) -> Result<()> {
    let user = me.user_id.as_str();
    let current = storage::account_data::get(&svc.db, user, room_id.as_str(), FULLY_READ).await?;
    let current_id = current
        .and_then(|c| serde_json::from_str::<Value>(&c).ok())
        .and_then(|c| c.get("event_id")?.as_str().map(str::to_owned));
    if let Some(current_id) = current_id {
        let position = |id: String| async move {
            Ok::<_, Error>(storage::events::get(&svc.db, &id).await?.and_then(|e| e.stream_pos).unwrap_or(0))
        };
        // The marker never moves back (as in Synapse).
        if position(current_id).await? >= position(event.event_id.to_string()).await? {
            return Ok(());
        }
    }
    let content = json!({ "event_id": event.event_id });
    let mut tx = svc.db.begin().await?;
    storage::account_data::put(&mut tx, user, room_id.as_str(), FULLY_READ, &content.to_string()).await?;
    tx.commit().await?;
    svc.notifier.notify([&*me.user_id]);
    Ok(())
}
