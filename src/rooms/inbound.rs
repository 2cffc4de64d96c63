//! Events from other servers: the spec's checks on receipt of a PDU, in order, then the
//! same append as local events. Forks merge through state resolution.

use std::collections::HashMap;
use std::sync::Arc;

use ruma::events::StateEventType;
use ruma::room_version_rules::RoomVersionRules;
use ruma::signatures::{PublicKeyMap, Verified};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, EventId, OwnedEventId, RoomId};

use super::pdu::Pdu;
use super::state::StateMap;
use super::{Arrival, append, get_pdu, resolve, state, versions};
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// What became of a received PDU.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Appended to the room.
    Accepted(OwnedEventId),
    /// Stored, but it fails auth against the current state: not shown, not built upon.
    SoftFailed(OwnedEventId),
    /// Already known.
    Duplicate(OwnedEventId),
    /// Dropped or rejected, with the reason.
    Rejected(String),
    /// Some prev or auth events are unknown: fetch them and try again.
    MissingEvents(Vec<OwnedEventId>),
}

/// The event ID of a PDU of a room version.
pub fn event_id_of(object: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<OwnedEventId> {
    if rules.event_id_format == ruma::room_version_rules::EventIdFormatVersion::V1 {
        return match object.get("event_id") {
            Some(CanonicalJsonValue::String(id)) => EventId::parse(id).map_err(|e| Error::bad_json(e.to_string())),
            _ => Err(Error::bad_json("PDU without event_id")),
        };
    }
    let hash = ruma::signatures::reference_hash(object, rules).map_err(|e| Error::bad_json(e.to_string()))?;
    EventId::parse(format!("${hash}")).map_err(|e| Error::bad_json(e.to_string()))
}

/// Check 1 on receipt: the PDU is well-formed for its room version. Drops what the sender
/// put in `unsigned` and gives the event ID; `Err` is why it is dropped.
pub(crate) fn well_formed(
    object: &mut CanonicalJsonObject,
    rules: &RoomVersionRules,
) -> Result<std::result::Result<OwnedEventId, String>> {
    if let Err(e) = ruma::state_res::check_pdu_format(object, &rules.event_format) {
        return Ok(Err(format!("malformed PDU: {e}")));
    }
    object.remove("unsigned");
    match event_id_of(object, rules) {
        Ok(id) => Ok(Ok(id)),
        Err(e) => Ok(Err(format!("no valid event ID: {e}"))),
    }
}

/// Checks 2 and 3 on receipt: the signatures, then the content hash (a mismatch keeps the
/// event redacted); the parsed PDU of `room_id`, or why it is refused.
pub(crate) fn verified(
    mut object: CanonicalJsonObject,
    keys: &PublicKeyMap,
    rules: &RoomVersionRules,
    event_id: OwnedEventId,
    room_id: &RoomId,
) -> Result<std::result::Result<Pdu, String>> {
    match ruma::signatures::verify_event(keys, &object, rules) {
        Ok(Verified::All) => {}
        Ok(Verified::Signatures) => {
            object = ruma::canonical_json::redact(object, &rules.redaction, None)
                .map_err(|e| Error::bad_json(e.to_string()))?;
        }
        Err(e) => return Ok(Err(format!("bad signature: {e}"))),
    }
    let json = ruma::canonical_json::to_canonical_value(&object).map_err(|e| Error::Internal(e.into()))?.to_string();
    let pdu = match Pdu::parse(event_id, &json, Some(room_id)) {
        Ok(pdu) => pdu,
        Err(e) => return Ok(Err(e)),
    };
    if pdu.room_id != room_id {
        return Ok(Err("PDU is for another room".into()));
    }
    Ok(Ok(pdu))
}

/// Runs the checks on receipt of a PDU for a room this server is in and stores it.
/// `keys` holds the verify keys of the servers that signed it.
pub async fn receive(
    svc: &Services,
    room_id: &RoomId,
    mut object: CanonicalJsonObject,
    keys: &PublicKeyMap,
) -> Result<Outcome> {
    let version = super::room_version(svc, room_id).await?;
    let rules = versions::rules(&version)?;
    // 1. Well-formed.
    let event_id = match well_formed(&mut object, &rules)? {
        Ok(id) => id,
        Err(reason) => return Ok(Outcome::Rejected(reason)),
    };
    if storage::events::get(&svc.db, event_id.as_str()).await?.is_some() {
        return Ok(Outcome::Duplicate(event_id));
    }
    // 2. Signatures; 3. content hash.
    let pdu = match verified(object, keys, &rules, event_id.clone(), room_id)? {
        Ok(pdu) => pdu,
        Err(reason) => return Ok(Outcome::Rejected(reason)),
    };

    let mut missing = Vec::new();
    let mut auth_events: HashMap<OwnedEventId, Arc<Pdu>> = HashMap::new();
    for id in &pdu.auth_events {
        match get_pdu(svc, id).await? {
            Some(p) => {
                auth_events.insert(id.clone(), p);
            }
            None => missing.push(id.clone()),
        }
    }
    let mut prev_groups = Vec::new();
    for id in &pdu.prev_events {
        match storage::events::get(&svc.db, id.as_str()).await? {
            Some(e) => prev_groups.push(e.state_group),
            None => missing.push(id.clone()),
        }
    }
    if !missing.is_empty() {
        return Ok(Outcome::MissingEvents(missing));
    }
    // Room version 12: the create event is found through the room ID.
    if rules.authorization.room_create_event_id_as_room_id
        && let Ok(create_id) = EventId::parse(format!("${}", &pdu.room_id.as_str()[1..]))
        && let Some(create) = get_pdu(svc, &create_id).await?
    {
        auth_events.insert(create_id, create);
    }

    let _guard = svc.rooms.lock(&svc.db, room_id).await?;
    // 4. Auth against its auth events.
    if let Err(e) = ruma::state_res::check_state_independent_auth_rules(&rules.authorization, &pdu, |id: &EventId| {
        auth_events.get(id).cloned()
    }) {
        return Ok(Outcome::Rejected(format!("fails auth against its auth events: {e}")));
    }
    // 5. Auth against the state before it (the resolved states after its prev events).
    let mut states = Vec::new();
    for g in prev_groups.iter().flatten() {
        states.push(state::load(svc, *g).await?);
    }
    let state_before = Arc::new(resolve::resolve(svc, &version, &states).await?);
    let group_before = match prev_groups.as_slice() {
        [Some(g)] => Some(*g),
        _ => None,
    };
    if let Err(e) = check_against(svc, &rules, &pdu, &state_before).await? {
        return Ok(Outcome::Rejected(format!("fails auth against the state before it: {e}")));
    }
    // 6. Soft failure: auth against the room's current state.
    let current = super::current_state(svc, room_id).await?;
    let soft_failed = check_against(svc, &rules, &pdu, &current).await?.is_err();
    let group_before = match group_before {
        Some(g) => Some(g),
        None if state_before.is_empty() => None,
        None => {
            let rows = state::to_rows(&state_before);
            let mut tx = svc.db.begin().await?;
            let g = storage::state::create_group(&mut tx, room_id.as_str(), None, &rows, &rows).await?;
            tx.commit().await?;
            state::remember(svc, g, state_before.clone());
            Some(g)
        }
    };
    append(svc, &pdu, &rules, &state_before, group_before, Arrival { txn: None, soft_failed, destinations: &[] })
        .await?;
    Ok(if soft_failed { Outcome::SoftFailed(event_id) } else { Outcome::Accepted(event_id) })
}

/// The state-dependent auth rules against a state.
pub(crate) async fn check_against(
    svc: &Services,
    rules: &RoomVersionRules,
    pdu: &Pdu,
    state: &StateMap,
) -> Result<std::result::Result<(), String>> {
    let content = pdu.content.clone();
    let mut wanted = ruma::state_res::auth_types_for_event(
        &pdu.kind,
        &pdu.sender,
        pdu.state_key.as_deref(),
        &content,
        &rules.authorization,
    )
    .unwrap_or_default();
    wanted.push((StateEventType::RoomCreate, String::new()));
    let mut loaded: HashMap<(StateEventType, String), Arc<Pdu>> = HashMap::new();
    for key in wanted {
        if let Some(id) = state.get(&key)
            && let Some(p) = get_pdu(svc, id).await?
        {
            loaded.insert(key, p);
        }
    }
    Ok(ruma::state_res::check_state_dependent_auth_rules(
        &rules.authorization,
        pdu,
        |kind: &StateEventType, key: &str| loaded.get(&(kind.clone(), key.to_owned())).cloned(),
    ))
}
