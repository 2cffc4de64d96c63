//! Event reports (`POST /rooms/{roomId}/report/{eventId}`): list, get, delete.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::EventId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::users::paging;
use super::{admin_v1, descending, next_token};
use crate::AppState;
use crate::admin::rooms::summary;
use crate::error::{Error, Result};
use crate::http::extract::{Admin, Path, Query};
use crate::storage::{self, reports::EventReport};
use crate::{api::client::rooms::parse_room_id, rooms};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/event_reports"), get(list))
        .route(admin_v1!("/event_reports/{report_id}"), get(get_one).delete(delete))
}

/// A report as Synapse lists it, with the room's name and alias and the event's sender.
async fn report_json(state: &AppState, r: &EventReport) -> Result<Value> {
    let room = match parse_room_id(&r.room_id) {
        Ok(room_id) => summary(state, &room_id).await.ok(),
        Err(_) => None,
    };
    let event = match EventId::parse(&r.event_id) {
        Ok(id) => rooms::get_pdu(state, &id).await?,
        Err(_) => None,
    };
    Ok(json!({
        "id": r.id,
        "received_ts": r.received_ts,
        "room_id": r.room_id,
        "name": room.as_ref().and_then(|s| s.name.clone()),
        "canonical_alias": room.as_ref().and_then(|s| s.canonical_alias.clone()),
        "event_id": r.event_id,
        "user_id": r.reporter,
        "reason": r.reason,
        "score": r.score,
        "sender": event.as_ref().map(|e| e.sender.to_string()),
        "event_json": event.map(|e| e.to_client()),
    }))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    room_id: Option<String>,
}

async fn list(State(state): State<AppState>, Admin(_): Admin, Query(q): Query<ListQuery>) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    // Synapse's `dir=b` (the default) is newest first.
    let oldest_first = !descending(Some(q.dir.as_deref().unwrap_or("b")))?;
    let (rows, total) = storage::reports::list_event_reports(
        &state.db,
        q.user_id.as_deref(),
        q.room_id.as_deref(),
        oldest_first,
        from,
        limit,
    )
    .await?;
    let mut reports = Vec::with_capacity(rows.len());
    for r in &rows {
        let mut report = report_json(&state, r).await?;
        if let Some(fields) = report.as_object_mut() {
            fields.remove("event_json");
        }
        reports.push(report);
    }
    let mut body = json!({ "event_reports": reports, "total": total });
    if let Some(next) = next_token(from, rows.len(), total) {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}

fn report_id(raw: &str) -> Result<i64> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id >= 0)
        .ok_or_else(|| Error::invalid_param("The report ID must be a non-negative integer"))
}

async fn get_one(State(state): State<AppState>, Admin(_): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    let report = storage::reports::event_report(&state.db, report_id(&id)?)
        .await?
        .ok_or_else(|| Error::not_found("Event report not found"))?;
    Ok(Json(report_json(&state, &report).await?))
}

async fn delete(State(state): State<AppState>, Admin(_): Admin, Path(id): Path<String>) -> Result<Json<Value>> {
    let mut tx = state.db.begin().await?;
    let found = storage::reports::delete_event_report(&mut tx, report_id(&id)?).await?;
    tx.commit().await?;
    if !found {
        return Err(Error::not_found("Event report not found"));
    }
    Ok(Json(json!({})))
}
