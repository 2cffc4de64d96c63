//! Transactions received from other servers (`PUT /_matrix/federation/v1/send/{txnId}`):
//! each PDU through the checks on receipt (the gap before it fetched from the origin first
//! when its prev events are unknown), each EDU applied, and the answer kept so that a
//! retried transaction is answered the same without being processed twice.

use std::time::{Duration, Instant};

use axum::http::Method;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId, RoomVersionId, ServerName};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Map, Value, json};

use super::{client, edu, keys};
use crate::AppState;
use crate::Services;
use crate::error::{Error, Result};
use crate::rooms::inbound::{self, Outcome};
use crate::rooms::{self, versions};
use crate::storage;

/// Most PDUs and EDUs in one transaction (spec), sent or received.
pub const MAX_PDUS: usize = 50;
pub const MAX_EDUS: usize = 100;
/// Most events asked of the origin to fill the gap before a PDU (the spec's default is 10).
const GAP_LIMIT: usize = 20;
/// A gap is asked for once per PDU, and not for long: the origin waits for our answer.
const GAP_TIMEOUT: Duration = Duration::from_secs(10);
/// After this long, the PDUs of a transaction left are judged without fetching gaps, so
/// the answer comes within seconds (as Synapse's): the origin retries what we refused.
const FETCH_BUDGET: Duration = Duration::from_secs(30);

/// The body of `PUT /send/{txnId}`.
#[derive(Deserialize)]
pub struct Transaction {
    pub origin: String,
    pub pdus: Vec<Box<RawValue>>,
    #[serde(default)]
    pub edus: Vec<Edu>,
}

#[derive(Deserialize)]
pub struct Edu {
    pub edu_type: String,
    #[serde(default)]
    pub content: Value,
}

/// Processes a transaction from `origin` (verified) and returns the answer:
/// `{"pdus": {event_id: {} | {"error": reason}}}`.
pub async fn receive(state: &AppState, origin: &ServerName, txn_id: &str, txn: Transaction) -> Result<Value> {
    if txn.origin != origin.as_str() {
        return Err(Error::forbidden("The transaction's origin is not the server that signed the request"));
    }
    if txn.pdus.len() > MAX_PDUS || txn.edus.len() > MAX_EDUS {
        return Err(Error::bad_json("A transaction holds at most 50 PDUs and 100 EDUs"));
    }
    if let Some(answer) = storage::federation::inbound_txn(&state.db, origin.as_str(), txn_id).await? {
        return serde_json::from_str(&answer).map_err(|e| Error::Internal(e.into()));
    }
    let mut pdus: Vec<CanonicalJsonObject> = Vec::with_capacity(txn.pdus.len());
    for raw in &txn.pdus {
        match serde_json::from_str(raw.get()) {
            Ok(object) => pdus.push(object),
            Err(e) => tracing::info!(%origin, error = %e, "PDU that is not canonical JSON ignored"),
        }
    }
    // Parents before children, so that a transaction carrying both needs no fetch.
    pdus.sort_by_key(depth_of);
    let mut results = Map::new();
    let deadline = Instant::now() + FETCH_BUDGET;
    for object in pdus {
        if let Some((event_id, result)) = receive_pdu(state, origin, object, deadline).await? {
            results.insert(event_id.to_string(), result);
        }
    }
    for edu in &txn.edus {
        // An EDU that cannot be applied is dropped: EDUs are not retried (spec).
        if let Err(e) = edu::receive(state, origin, &edu.edu_type, &edu.content).await {
            tracing::info!(%origin, edu_type = %edu.edu_type, error = %e, "EDU not applied");
        }
    }
    let answer = json!({ "pdus": results });
    storage::federation::put_inbound_txn(&state.db, origin.as_str(), txn_id, &answer.to_string(), storage::now_ms())
        .await?;
    Ok(answer)
}

/// One PDU of a transaction: its event ID and its result, or None when it names no room we
/// know (its event ID depends on the room version, which we then do not know; Synapse
/// leaves those out of the answer too).
async fn receive_pdu(
    svc: &Services,
    origin: &ServerName,
    object: CanonicalJsonObject,
    deadline: Instant,
) -> Result<Option<(OwnedEventId, Value)>> {
    let Some(CanonicalJsonValue::String(room_id)) = object.get("room_id") else {
        tracing::info!(%origin, "PDU without a room ID ignored");
        return Ok(None);
    };
    let Ok(room_id) = RoomId::parse(room_id) else {
        tracing::info!(%origin, %room_id, "PDU with an invalid room ID ignored");
        return Ok(None);
    };
    let Some((version, _)) = storage::rooms::get(&svc.db, room_id.as_str()).await? else {
        tracing::info!(%origin, %room_id, "PDU of an unknown room ignored");
        return Ok(None);
    };
    let version = RoomVersionId::try_from(version).map_err(|e| Error::Internal(e.into()))?;
    let rules = versions::rules(&version)?;
    let Ok(event_id) = inbound::event_id_of(&object, &rules) else {
        tracing::info!(%origin, %room_id, "PDU without a computable event ID ignored");
        return Ok(None);
    };
    let our_name = svc.config.server_name.as_str();
    let outcome = if !rooms::servers_in_room(svc, &room_id).await?.iter().any(|s| s.as_str() == our_name) {
        Outcome::Rejected("This server is not in the room".into())
    } else if !rooms::server_allowed(svc, &room_id, origin).await? {
        Outcome::Rejected("The sending server is denied by the room's server ACL".into())
    } else {
        match receive_filling_gap(svc, origin, &room_id, &event_id, object, &rules, deadline).await {
            Ok(outcome) => outcome,
            Err(e @ Error::Internal(_)) => return Err(e),
            Err(e) => Outcome::Rejected(e.to_string()),
        }
    };
    let result = match outcome {
        Outcome::Accepted(_) | Outcome::SoftFailed(_) | Outcome::Duplicate(_) => json!({}),
        Outcome::Rejected(reason) => {
            tracing::info!(%origin, %event_id, %reason, "PDU rejected");
            json!({ "error": reason })
        }
        Outcome::MissingEvents(missing) => {
            tracing::info!(%origin, %event_id, ?missing, "PDU with unknown prev or auth events dropped");
            json!({ "error": format!("Unknown prev or auth events: {missing:?}") })
        }
    };
    Ok(Some((event_id, result)))
}

/// Receives a PDU; when it refers to unknown events, asks the origin for the gap between
/// our forward extremities and it (`get_missing_events`, before `deadline`), receives those
/// oldest first and tries once more; prev events still unknown then are fetched with the
/// state at them (`rooms::federation::fetch_state_at`) and the PDU is tried a last time.
async fn receive_filling_gap(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    event_id: &EventId,
    object: CanonicalJsonObject,
    rules: &ruma::room_version_rules::RoomVersionRules,
    deadline: Instant,
) -> Result<Outcome> {
    let keys = keys::keys_for_pdu(svc, &object, rules).await?;
    let outcome = inbound::receive(svc, room_id, object.clone(), &keys).await?;
    let time_left = deadline.saturating_duration_since(Instant::now());
    if !matches!(outcome, Outcome::MissingEvents(_)) || time_left.is_zero() {
        return Ok(outcome);
    }
    let gap = match missing_events(svc, origin, room_id, event_id, time_left.min(GAP_TIMEOUT)).await {
        Ok(gap) => gap,
        Err(e) => {
            tracing::info!(%origin, %event_id, error = %e, "cannot fetch the missing events");
            return Ok(outcome);
        }
    };
    for earlier in gap {
        let keys = keys::keys_for_pdu(svc, &earlier, rules).await?;
        let earlier_outcome = inbound::receive(svc, room_id, earlier, &keys).await?;
        if !matches!(earlier_outcome, Outcome::Accepted(_) | Outcome::Duplicate(_)) {
            tracing::info!(%origin, %event_id, outcome = ?earlier_outcome, "event of a gap not accepted");
        }
    }
    let outcome = inbound::receive(svc, room_id, object.clone(), &keys).await?;
    let Outcome::MissingEvents(missing) = &outcome else { return Ok(outcome) };
    // Still missing prev events (a gap longer than we asked for): their state, from the
    // origin, lets the PDU be judged without the events in between.
    let prevs = match object.get("prev_events") {
        Some(CanonicalJsonValue::Array(prevs)) => prevs.clone(),
        _ => Vec::new(),
    };
    for prev in missing.iter().filter(|id| prevs.contains(&CanonicalJsonValue::String(id.to_string()))) {
        let time_left = deadline.saturating_duration_since(Instant::now());
        let fetch = rooms::federation::fetch_state_at(svc, origin, room_id, prev, time_left.min(GAP_TIMEOUT));
        let error = match tokio::time::timeout(time_left, fetch).await {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e.to_string(),
            Err(_) => "out of time".to_owned(),
        };
        tracing::info!(%origin, %event_id, %prev, %error, "cannot fetch the state at a missing prev event");
        return Ok(outcome);
    }
    inbound::receive(svc, room_id, object, &keys).await
}

#[derive(Deserialize)]
struct MissingEvents {
    events: Vec<Box<RawValue>>,
}

/// The events between our forward extremities and `latest`, as the origin has them,
/// oldest first.
async fn missing_events(
    svc: &Services,
    origin: &ServerName,
    room_id: &RoomId,
    latest: &EventId,
    timeout: Duration,
) -> anyhow::Result<Vec<CanonicalJsonObject>> {
    let earliest = storage::rooms::extremities(&svc.db, room_id.as_str()).await?;
    let body = json!({
        "earliest_events": earliest,
        "latest_events": [latest],
        "limit": GAP_LIMIT,
        "min_depth": 0,
    });
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", client::encode(room_id.as_str()));
    let answer: MissingEvents =
        client::request_with_timeout(svc, origin, Method::POST, &path, Some(&body), timeout).await?;
    let mut events: Vec<CanonicalJsonObject> =
        answer.events.iter().take(GAP_LIMIT).filter_map(|raw| serde_json::from_str(raw.get()).ok()).collect();
    events.sort_by_key(depth_of);
    Ok(events)
}

fn depth_of(object: &CanonicalJsonObject) -> i64 {
    match object.get("depth") {
        Some(CanonicalJsonValue::Integer(depth)) => i64::from(*depth),
        _ => 0,
    }
}
