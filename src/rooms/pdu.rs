//! A PDU as the rest of the server sees it: the parsed fields the auth rules, state
//! resolution and clients need, beside the canonical JSON it came from.

use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::{
    CanonicalJsonObject, EventId, MilliSecondsSinceUnixEpoch, OwnedEventId, OwnedRoomId, OwnedUserId, RoomId, UInt,
    UserId,
};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{Value, json};

/// A parsed event. Cheap to share (`Arc<Pdu>`).
#[derive(Debug, Clone)]
pub struct Pdu {
    pub event_id: OwnedEventId,
    pub room_id: OwnedRoomId,
    pub sender: OwnedUserId,
    pub origin_server_ts: MilliSecondsSinceUnixEpoch,
    pub kind: TimelineEventType,
    pub content: Box<RawValue>,
    pub state_key: Option<String>,
    pub prev_events: Vec<OwnedEventId>,
    pub auth_events: Vec<OwnedEventId>,
    pub depth: u64,
    /// The target of a redaction (top-level before room version 11, in `content` after).
    pub redacts: Option<OwnedEventId>,
    pub rejected: bool,
    /// Whether the PDU carries `room_id` (the create event of room version 12 does not).
    pub has_room_id: bool,
    /// The canonical JSON of the PDU (without `event_id` from room version 3 on).
    pub json: Arc<str>,
}

#[derive(Deserialize)]
struct RawPdu {
    #[serde(default)]
    room_id: Option<OwnedRoomId>,
    sender: OwnedUserId,
    origin_server_ts: MilliSecondsSinceUnixEpoch,
    #[serde(rename = "type")]
    kind: TimelineEventType,
    content: Box<RawValue>,
    #[serde(default)]
    state_key: Option<String>,
    prev_events: Vec<EventRef>,
    auth_events: Vec<EventRef>,
    depth: UInt,
    #[serde(default)]
    redacts: Option<OwnedEventId>,
}

/// Room versions 1 and 2 reference events as `[event_id, hashes]`, later ones by ID alone.
#[derive(Deserialize)]
#[serde(untagged)]
enum EventRef {
    Id(OwnedEventId),
    WithHashes(OwnedEventId, serde::de::IgnoredAny),
}

impl EventRef {
    fn into_id(self) -> OwnedEventId {
        match self {
            EventRef::Id(id) | EventRef::WithHashes(id, _) => id,
        }
    }
}

#[derive(Deserialize)]
struct RedactsInContent {
    #[serde(default)]
    redacts: Option<OwnedEventId>,
}

impl Pdu {
    /// Parses stored or received canonical JSON. `room_id` is needed for the create event
    /// of room version 12, which has none.
    pub fn parse(event_id: OwnedEventId, json: &str, room_id: Option<&RoomId>) -> Result<Self, String> {
        let raw: RawPdu = serde_json::from_str(json).map_err(|e| format!("malformed PDU: {e}"))?;
        let has_room_id = raw.room_id.is_some();
        let room_id = raw.room_id.or_else(|| room_id.map(ToOwned::to_owned)).ok_or("PDU has no room_id")?;
        let redacts = match raw.redacts {
            Some(r) => Some(r),
            None if raw.kind == TimelineEventType::RoomRedaction => {
                serde_json::from_str::<RedactsInContent>(raw.content.get()).ok().and_then(|c| c.redacts)
            }
            None => None,
        };
        Ok(Pdu {
            event_id,
            room_id,
            sender: raw.sender,
            origin_server_ts: raw.origin_server_ts,
            kind: raw.kind,
            content: raw.content,
            state_key: raw.state_key,
            prev_events: raw.prev_events.into_iter().map(EventRef::into_id).collect(),
            auth_events: raw.auth_events.into_iter().map(EventRef::into_id).collect(),
            depth: raw.depth.into(),
            redacts,
            rejected: false,
            has_room_id,
            json: Arc::from(json),
        })
    }

    /// About what the parsed event takes in memory (its JSON, content and IDs), for caches.
    pub fn approximate_bytes(&self) -> usize {
        let ids = 1 + self.prev_events.len() + self.auth_events.len() + self.redacts.iter().len();
        std::mem::size_of::<Pdu>()
            + self.json.len()
            + self.content.get().len()
            + self.room_id.as_str().len()
            + self.sender.as_str().len()
            + self.state_key.as_ref().map_or(0, String::len)
            + ids * (self.event_id.as_str().len() + 16)
    }

    pub fn is_state(&self) -> bool {
        self.state_key.is_some()
    }

    pub fn content_value(&self) -> Value {
        serde_json::from_str(self.content.get()).unwrap_or_else(|_| json!({}))
    }

    /// A field of the content as a string.
    pub fn content_str(&self, field: &str) -> Option<String> {
        self.content_value().get(field).and_then(Value::as_str).map(str::to_owned)
    }

    /// The `m.relates_to` of the content: (rel_type, event_id).
    pub fn relation(&self) -> Option<(String, OwnedEventId)> {
        let content = self.content_value();
        let rel = content.get("m.relates_to")?;
        let rel_type = rel.get("rel_type")?.as_str()?.to_owned();
        let target = EventId::parse(rel.get("event_id")?.as_str()?).ok()?;
        Some((rel_type, target))
    }

    /// The event in the client-server format (without `unsigned`, which the caller adds).
    pub fn to_client(&self) -> Value {
        let mut event = json!({
            "event_id": self.event_id,
            "room_id": self.room_id,
            "sender": self.sender,
            "origin_server_ts": self.origin_server_ts,
            "type": self.kind,
        });
        event["content"] = self.content_value();
        if let Some(key) = &self.state_key {
            event["state_key"] = json!(key);
        }
        if let Some(redacts) = &self.redacts {
            event["redacts"] = json!(redacts);
        }
        // Most stored events have no `unsigned` (state events have `prev_content` there):
        // parse the whole PDU only when the key may be in it.
        if memchr::memmem::find(self.json.as_bytes(), b"\"unsigned\"").is_some()
            && let Ok(Value::Object(mut pdu)) = serde_json::from_str::<Value>(&self.json)
            && let Some(unsigned) = pdu.remove("unsigned")
        {
            event["unsigned"] = unsigned;
        }
        event
    }

    /// The event as stripped state (invites, knocks, room previews).
    pub fn to_stripped(&self) -> Value {
        json!({
            "type": self.kind,
            "state_key": self.state_key,
            "sender": self.sender,
            "content": self.content_value(),
        })
    }

    pub fn canonical_object(&self) -> Result<CanonicalJsonObject, String> {
        serde_json::from_str(&self.json).map_err(|e| format!("stored PDU is not canonical JSON: {e}"))
    }
}

/// A stored PDU as other servers get it: without `unsigned`, which holds our local
/// bookkeeping (`prev_content`, `redacted_because`).
pub fn federation_format(json: &str) -> serde_json::Result<Value> {
    let mut pdu: Value = serde_json::from_str(json)?;
    if let Some(object) = pdu.as_object_mut() {
        object.remove("unsigned");
    }
    Ok(pdu)
}

impl ruma::state_res::Event for Pdu {
    type Id = OwnedEventId;

    fn event_id(&self) -> &Self::Id {
        &self.event_id
    }
    fn room_id(&self) -> Option<&RoomId> {
        self.has_room_id.then_some(&*self.room_id)
    }
    fn sender(&self) -> &UserId {
        &self.sender
    }
    fn origin_server_ts(&self) -> MilliSecondsSinceUnixEpoch {
        self.origin_server_ts
    }
    fn event_type(&self) -> &TimelineEventType {
        &self.kind
    }
    fn content(&self) -> &RawValue {
        &self.content
    }
    fn state_key(&self) -> Option<&str> {
        self.state_key.as_deref()
    }
    fn prev_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.prev_events.iter())
    }
    fn auth_events(&self) -> Box<dyn DoubleEndedIterator<Item = &Self::Id> + '_> {
        Box::new(self.auth_events.iter())
    }
    fn redacts(&self) -> Option<&Self::Id> {
        self.redacts.as_ref()
    }
    fn rejected(&self) -> bool {
        self.rejected
    }
}
