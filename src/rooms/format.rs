//! Events as clients see them, and the content checks of known state events.

use std::collections::HashMap;

use ruma::events::TimelineEventType;
use serde_json::{Value, json};

use super::pdu::Pdu;
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;

/// Rejects malformed content of state events whose shape the spec defines (400 `M_BAD_JSON`).
pub fn validate_content(kind: &TimelineEventType, content: &Value) -> Result<()> {
    use ruma::events::room;
    if !content.is_object() {
        return Err(Error::bad_json("Event content must be a JSON object"));
    }
    fn check<T: serde::de::DeserializeOwned>(content: &Value) -> Result<()> {
        serde_json::from_value::<T>(content.clone())
            .map(|_| ())
            .map_err(|e| Error::bad_json(format!("Invalid content: {e}")))
    }
    match kind {
        TimelineEventType::RoomName => check::<room::name::RoomNameEventContent>(content),
        TimelineEventType::RoomTopic => check::<room::topic::RoomTopicEventContent>(content),
        TimelineEventType::RoomJoinRules => check::<room::join_rules::RoomJoinRulesEventContent>(content),
        TimelineEventType::RoomHistoryVisibility => {
            check::<room::history_visibility::RoomHistoryVisibilityEventContent>(content)
        }
        TimelineEventType::RoomGuestAccess => check::<room::guest_access::RoomGuestAccessEventContent>(content),
        TimelineEventType::RoomPowerLevels => check::<room::power_levels::RoomPowerLevelsEventContent>(content),
        TimelineEventType::RoomMember => check::<room::member::RoomMemberEventContent>(content),
        TimelineEventType::RoomCanonicalAlias => {
            check::<room::canonical_alias::RoomCanonicalAliasEventContent>(content)
        }
        TimelineEventType::RoomAvatar => check::<room::avatar::RoomAvatarEventContent>(content),
        TimelineEventType::RoomEncryption => check::<room::encryption::RoomEncryptionEventContent>(content),
        TimelineEventType::RoomTombstone => check::<room::tombstone::RoomTombstoneEventContent>(content),
        TimelineEventType::RoomServerAcl => check::<room::server_acl::RoomServerAclEventContent>(content),
        _ if kind.to_string() == super::retention::EVENT_TYPE => {
            super::retention::Policy::from_content(content).map(drop).map_err(Error::bad_json)
        }
        _ => Ok(()),
    }
}

/// A JSON object of these entries, moved in. `json!` would copy every value it is given
/// (it serialises a reference), which for a sync body is every event a second time.
pub fn object<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Object(entries.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
}

/// Who is looking: `unsigned.transaction_id` is shown to the sending device only.
#[derive(Clone, Copy)]
pub struct Viewer<'a> {
    pub user_id: &'a str,
    pub device_id: &'a str,
}

/// The client format of an event, with `unsigned.age`, the sender's `transaction_id`,
/// and (when `bundle`) the aggregations of `m.relations` (thread summaries, edits).
pub async fn client_event(svc: &Services, pdu: &Pdu, viewer: Option<Viewer<'_>>, bundle: bool) -> Result<Value> {
    let mut formatted = client_events(svc, &[pdu], viewer, bundle).await?;
    formatted.pop().ok_or_else(|| Error::Internal(anyhow::anyhow!("no event formatted")))
}

/// The client format of several events, as [`client_event`] gives each, with the transaction
/// IDs and thread replies of all of them read in one query each (a sync formats thousands).
pub async fn client_events(
    svc: &Services,
    pdus: &[&Pdu],
    viewer: Option<Viewer<'_>>,
    bundle: bool,
) -> Result<Vec<Value>> {
    let own: Vec<&str> = match viewer {
        Some(v) => pdus.iter().filter(|p| p.sender.as_str() == v.user_id).map(|p| p.event_id.as_str()).collect(),
        None => vec![],
    };
    let txns: HashMap<String, String> = match viewer {
        Some(v) if !own.is_empty() => {
            storage::events::txns_of_events(&svc.db, &own, v.user_id, v.device_id).await?.into_iter().collect()
        }
        _ => HashMap::new(),
    };
    let mut replies: HashMap<String, Vec<String>> = HashMap::new();
    if bundle {
        let ids: Vec<&str> = pdus.iter().map(|p| p.event_id.as_str()).collect();
        for (root, reply) in storage::events::thread_replies(&svc.db, &ids).await? {
            replies.entry(root).or_default().push(reply);
        }
    }
    let mut out = Vec::with_capacity(pdus.len());
    for pdu in pdus {
        let thread = replies.get(pdu.event_id.as_str()).map_or(&[][..], Vec::as_slice);
        let txn = txns.get(pdu.event_id.as_str()).map(String::as_str);
        out.push(format_one(svc, pdu, viewer, txn, thread).await?);
    }
    Ok(out)
}

/// One event in the client format, given its transaction ID (for its sending device) and
/// its thread replies, oldest first.
async fn format_one(
    svc: &Services,
    pdu: &Pdu,
    viewer: Option<Viewer<'_>>,
    txn: Option<&str>,
    thread: &[String],
) -> Result<Value> {
    let erased = match viewer.and_then(|v| ruma::UserId::parse(v.user_id).ok()) {
        Some(user) => super::visibility::erased_copy(svc, pdu, &user).await?,
        None => None,
    };
    let pdu = erased.as_ref().unwrap_or(pdu);
    let mut event = pdu.to_client();
    let age = crate::storage::now_ms() - i64::from(pdu.origin_server_ts.0);
    let mut unsigned = match event.get("unsigned") {
        Some(Value::Object(u)) => u.clone(),
        _ => serde_json::Map::new(),
    };
    unsigned.insert("age".into(), json!(age.max(0)));
    if let Some(txn) = txn {
        unsigned.insert("transaction_id".into(), json!(txn));
    }
    if let Some(relations) = bundled_relations(svc, pdu, viewer, thread).await? {
        unsigned.insert("m.relations".into(), relations);
    }
    event["unsigned"] = Value::Object(unsigned);
    Ok(event)
}

/// The thread summary of a thread root (`m.thread`: latest event, count, participation),
/// from its replies (oldest first).
async fn bundled_relations(
    svc: &Services,
    pdu: &Pdu,
    viewer: Option<Viewer<'_>>,
    thread: &[String],
) -> Result<Option<Value>> {
    let Some(latest_id) = thread.last() else { return Ok(None) };
    let latest_id = ruma::OwnedEventId::try_from(latest_id.as_str()).map_err(|e| Error::Internal(e.into()))?;
    let Some(latest) = super::get_pdu(svc, &latest_id).await? else { return Ok(None) };
    let mut participated = viewer.is_some_and(|v| v.user_id == pdu.sender.as_str());
    if let Some(v) = viewer
        && !participated
    {
        for id in thread {
            let id = ruma::OwnedEventId::try_from(id.as_str()).map_err(|e| Error::Internal(e.into()))?;
            if super::get_pdu(svc, &id).await?.is_some_and(|p| p.sender.as_str() == v.user_id) {
                participated = true;
                break;
            }
        }
    }
    let latest_event = Box::pin(client_event(svc, &latest, viewer, false)).await?;
    Ok(Some(json!({
        "m.thread": {
            "latest_event": latest_event,
            "count": thread.len(),
            "current_user_participated": participated,
        }
    })))
}
