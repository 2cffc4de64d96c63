//! Serving events to other servers: `GET /event/{eventId}`, `GET /state/{roomId}`,
//! `GET /state_ids/{roomId}`, `GET /event_auth/{roomId}/{eventId}`, `GET /backfill/{roomId}`
//! and `POST /get_missing_events/{roomId}`.

use axum::extract::{RawQuery, State};
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{EventId, OwnedEventId, OwnedRoomId, RoomId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::FederationAuth;
use crate::AppState;
use crate::error::{Error, Result};
use crate::federation::events;
use crate::http::extract::{self, Path, Query};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/event/{event_id}", get(event))
        .route("/_matrix/federation/v1/state/{room_id}", get(state))
        .route("/_matrix/federation/v1/state_ids/{room_id}", get(state_ids))
        .route("/_matrix/federation/v1/event_auth/{room_id}/{event_id}", get(event_auth))
        .route("/_matrix/federation/v1/backfill/{room_id}", get(backfill))
        .route("/_matrix/federation/v1/get_missing_events/{room_id}", post(missing_events))
}

fn room_id(room_id: &str) -> Result<OwnedRoomId> {
    RoomId::parse(room_id).map_err(|_| Error::invalid_param(format!("Invalid room ID {room_id}")))
}

fn event_id(event_id: &str) -> Result<OwnedEventId> {
    EventId::parse(event_id).map_err(|_| Error::invalid_param(format!("Invalid event ID {event_id}")))
}

async fn event(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(id): Path<String>,
) -> Result<Json<Value>> {
    Ok(Json(events::event(&state, &origin, &event_id(&id)?).await?))
}

#[derive(Deserialize)]
struct AtEvent {
    event_id: String,
}

async fn state(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(room): Path<String>,
    Query(at): Query<AtEvent>,
) -> Result<Json<Value>> {
    let (pdu_ids, chain_ids) =
        events::state_ids_at(&state, &origin, &room_id(&room)?, &event_id(&at.event_id)?).await?;
    let pdus = events::pdus(&state, &pdu_ids).await?;
    let auth_chain = events::pdus(&state, &chain_ids).await?;
    Ok(Json(json!({ "pdus": pdus, "auth_chain": auth_chain })))
}

async fn state_ids(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(room): Path<String>,
    Query(at): Query<AtEvent>,
) -> Result<Json<Value>> {
    let (pdu_ids, chain_ids) =
        events::state_ids_at(&state, &origin, &room_id(&room)?, &event_id(&at.event_id)?).await?;
    Ok(Json(json!({ "pdu_ids": pdu_ids, "auth_chain_ids": chain_ids })))
}

async fn event_auth(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path((room, id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let chain = events::event_auth(&state, &origin, &room_id(&room)?, &event_id(&id)?).await?;
    Ok(Json(json!({ "auth_chain": chain })))
}

/// `?v=$a&v=$b&limit=10`: the query repeats `v`, which the usual extractor cannot read.
async fn backfill(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(room): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>> {
    let (mut from, mut limit) = (Vec::new(), None);
    for (key, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*key {
            "v" => from.push(event_id(&value)?),
            "limit" => limit = Some(value.parse::<usize>().map_err(|_| Error::invalid_param("Invalid limit"))?),
            _ => {}
        }
    }
    let limit = limit.ok_or_else(|| Error::missing_param("Missing limit"))?;
    if from.is_empty() {
        return Err(Error::missing_param("Missing v"));
    }
    let pdus = events::backfill(&state, &origin, &room_id(&room)?, &from, limit).await?;
    Ok(Json(events::transaction(&state, pdus)))
}

#[derive(Deserialize)]
struct MissingEventsBody {
    earliest_events: Vec<OwnedEventId>,
    latest_events: Vec<OwnedEventId>,
    #[serde(default = "default_limit")]
    limit: usize,
    #[serde(default)]
    min_depth: u64,
}

fn default_limit() -> usize {
    10
}

async fn missing_events(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(room): Path<String>,
    extract::Json(body): extract::Json<MissingEventsBody>,
) -> Result<Json<Value>> {
    let room = room_id(&room)?;
    let found = events::missing_events(
        &state,
        &origin,
        &room,
        &body.earliest_events,
        &body.latest_events,
        body.limit,
        body.min_depth,
    )
    .await?;
    Ok(Json(json!({ "events": found })))
}
