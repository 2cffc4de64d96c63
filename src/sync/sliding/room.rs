//! One room of a sliding sync response: its timeline, the state the client asked for
//! (`required_state`), and what a room list shows (name, avatar, heroes, counts).

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;

use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedEventId, RoomId};
use serde_json::{Map, Value, json};

use super::lists::Candidate;
use crate::Services;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::rooms::pdu::Pdu;
use crate::rooms::state::StateMap;
use crate::rooms::{self, timeline};
use crate::storage;
use crate::sync::filter::RoomEventFilter;
use crate::sync::token::SyncToken;
use crate::sync::v2;

/// Most timeline events one room sends in a response.
const MAX_TIMELINE_LIMIT: u64 = 100;

/// Heroes a room shows when the client names it from its members.
const MAX_HEROES: usize = 5;

/// The `required_state` of a room: (event type, state key) pairs where `*` matches any,
/// `$ME` is the user's own ID and `(m.room.member, $LAZY)` asks for the members of the
/// timeline's senders. Merged over every list and subscription that shows the room.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RequiredState(BTreeSet<(String, String)>);

impl RequiredState {
    pub fn add(&mut self, pairs: &[(String, String)]) {
        self.0.extend(pairs.iter().cloned());
    }

    fn lazy_members(&self) -> bool {
        self.0.iter().any(|(t, k)| (t == "m.room.member" || t == "*") && k == "$LAZY")
    }

    fn wants(&self, kind: &str, key: &str, me: &str) -> bool {
        self.0.iter().any(|(t, k)| {
            (t == "*" || t == kind) && (k == "*" || k == key || (k == "$ME" && key == me)) && k != "$LAZY"
        })
    }

    /// How the config is remembered per room, to notice when the client changes it.
    pub fn to_stored(&self) -> String {
        json!(self.0.iter().collect::<Vec<_>>()).to_string()
    }
}

/// What the client asked for this room.
pub struct RoomConfig {
    pub timeline_limit: u64,
    pub required_state: RequiredState,
}

/// How much of the room the client has.
pub struct Known {
    /// The client has the room up to this position (None: nothing, send it whole).
    pub since: Option<i64>,
    /// It was sent with another `required_state`: send all of the requested state again.
    pub state_config_changed: bool,
}

/// The room's entry, or None when an incremental response has nothing new for it.
pub async fn room(
    svc: &Services,
    me: &Identity,
    candidate: &Candidate,
    known: Known,
    up_to: i64,
    config: &RoomConfig,
    is_dm: bool,
) -> Result<Option<Value>> {
    let listed = &candidate.room;
    let room_id = RoomId::parse(&listed.room_id).map_err(|e| Error::Internal(e.into()))?;
    let membership_pos = listed.membership_pos.unwrap_or(0);
    let mut entry = Map::new();
    if known.since.is_none() {
        entry.insert("initial".into(), json!(true));
    }
    entry.insert("bump_stamp".into(), json!(candidate.bump_stamp));
    if is_dm {
        entry.insert("is_dm".into(), json!(true));
    }
    if matches!(listed.membership.as_str(), "invite" | "knock") {
        if known.since.is_some_and(|s| membership_pos <= s) {
            return Ok(None);
        }
        let stripped = v2::stripped_state(svc, &room_id, &me.user_id).await?;
        let state_content = |kind: &str, field: &str| {
            stripped.iter().find(|e| e["type"] == kind).and_then(|e| e["content"][field].as_str()).map(str::to_owned)
        };
        if let Some(name) = state_content("m.room.name", "name") {
            entry.insert("name".into(), json!(name));
        }
        if let Some(avatar) = state_content("m.room.avatar", "url") {
            entry.insert("avatar".into(), json!(avatar));
        }
        entry.insert("invite_state".into(), json!(stripped));
        return Ok(Some(Value::Object(entry)));
    }

    // A room the user is no longer in shows what they saw up to their leave.
    let joined = listed.membership == "join";
    let up_to = if joined { up_to } else { membership_pos.min(up_to) };
    let limit = config.timeline_limit.min(MAX_TIMELINE_LIMIT) as usize;
    let (events, limited, prev_batch, any_new) =
        timeline_window(svc, me, &room_id, joined, known.since, up_to, limit).await?;
    if known.since.is_some() && !any_new && !known.state_config_changed {
        return Ok(None);
    }

    let state_now =
        if joined { rooms::current_state(svc, &room_id).await? } else { v2::state_at(svc, &room_id, up_to).await? };
    // Sent whole: None. Else the state that changed since the client's position, read
    // only when the timeline shows state events or has a gap.
    let changed_state: Option<Vec<OwnedEventId>> = match known.since {
        Some(_) if known.state_config_changed => None,
        None => None,
        Some(since) if limited || events.iter().any(|e| e.is_state()) => {
            Some(v2::state_delta(&*v2::state_at(svc, &room_id, since).await?, &state_now))
        }
        Some(_) => Some(vec![]),
    };
    let required = required_state(svc, me, &state_now, changed_state, &events, &config.required_state).await?;

    entry.insert("timeline".into(), v2::to_client(svc, me, &events).await?.into());
    entry.insert("required_state".into(), v2::to_client(svc, me, &required).await?.into());
    entry.insert("prev_batch".into(), json!(prev_batch));
    entry.insert("limited".into(), json!(limited));
    // Events that arrived since the client's position (all of an incremental timeline).
    entry.insert("num_live".into(), json!(if known.since.is_some() { events.len() } else { 0 }));
    describe(svc, me, &room_id, &state_now, &mut entry).await?;
    let (notifications, highlights) = crate::push::unread_counts(svc, &me.user_id, &room_id).await?;
    entry.insert("notification_count".into(), json!(notifications));
    entry.insert("highlight_count".into(), json!(highlights));
    Ok(Some(Value::Object(entry)))
}

/// The newest `limit` visible events in (`since`, `up_to`], oldest first, whether older
/// ones were left out, the token to paginate back from, and whether there was any event.
async fn timeline_window(
    svc: &Services,
    me: &Identity,
    room_id: &RoomId,
    joined: bool,
    since: Option<i64>,
    up_to: i64,
    limit: usize,
) -> Result<(Vec<Arc<Pdu>>, bool, String, bool)> {
    let filter = RoomEventFilter::default();
    // With no events wanted, one is still read to learn whether there are any.
    let page = timeline::paginate(svc, room_id, &me.user_id, joined, up_to, since, true, limit.max(1), &filter).await?;
    let mut events = page.events;
    let mut limited = page.next.is_some();
    let any = !events.is_empty();
    if limit == 0 {
        limited = !events.is_empty();
        events.clear();
    }
    events.reverse();
    // Positions come newest first, as the events did.
    let start = match page.positions.last() {
        Some(oldest) if !events.is_empty() => oldest - 1,
        _ => up_to,
    };
    let from = if limit == 0 { up_to } else { page.next.unwrap_or(start) };
    Ok((events, limited, SyncToken::at(from).to_string(), any))
}

/// The requested state: all that matches for a room sent whole (`changed` None), else the
/// matching entries among those that changed; plus the members of the timeline's senders
/// for `$LAZY`.
async fn required_state(
    svc: &Services,
    me: &Identity,
    state: &StateMap,
    changed: Option<Vec<OwnedEventId>>,
    timeline: &[Arc<Pdu>],
    config: &RequiredState,
) -> Result<Vec<Arc<Pdu>>> {
    let me_str = me.user_id.as_str();
    let ids: Vec<OwnedEventId> = match changed {
        None => state
            .iter()
            .filter(|((kind, key), _)| config.wants(&kind.to_string(), key, me_str))
            .map(|(_, id)| id.clone())
            .collect(),
        Some(ids) => ids,
    };
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for id in ids {
        if let Some(pdu) = rooms::get_pdu(svc, &id).await?
            && config.wants(&pdu.kind.to_string(), pdu.state_key.as_deref().unwrap_or_default(), me_str)
            && seen.insert(pdu.event_id.clone())
        {
            out.push(pdu);
        }
    }
    if config.lazy_members() {
        let senders: BTreeSet<&str> = timeline.iter().map(|e| e.sender.as_str()).collect();
        for sender in senders {
            if let Some(pdu) = rooms::state_pdu(svc, state, &StateEventType::RoomMember, sender).await?
                && seen.insert(pdu.event_id.clone())
            {
                out.push(pdu);
            }
        }
    }
    Ok(out)
}

/// What a room list shows of a room: name, avatar, heroes and member counts.
async fn describe(
    svc: &Services,
    me: &Identity,
    room_id: &RoomId,
    state: &StateMap,
    entry: &mut Map<String, Value>,
) -> Result<()> {
    let content = |pdu: Option<Arc<Pdu>>, field: &str| pdu.and_then(|p| p.content_str(field)).filter(|s| !s.is_empty());
    if let Some(name) = content(rooms::state_pdu(svc, state, &StateEventType::RoomName, "").await?, "name") {
        entry.insert("name".into(), json!(name));
    }
    if let Some(url) = content(rooms::state_pdu(svc, state, &StateEventType::RoomAvatar, "").await?, "url") {
        entry.insert("avatar".into(), json!(url));
    }
    let members = storage::rooms::members(&svc.db, room_id.as_str()).await?;
    let joined = members.iter().filter(|(_, m, _)| m == "join").count();
    let invited = members.iter().filter(|(_, m, _)| m == "invite").count();
    let mut heroes = Vec::new();
    for (user, _, event_id) in
        members.iter().filter(|(u, m, _)| u != me.user_id.as_str() && (m == "join" || m == "invite")).take(MAX_HEROES)
    {
        let mut hero = json!({ "user_id": user });
        let id = OwnedEventId::try_from(event_id.as_str()).map_err(|e| Error::Internal(e.into()))?;
        if let Some(pdu) = rooms::get_pdu(svc, &id).await?
            && pdu.kind == TimelineEventType::RoomMember
        {
            if let Some(name) = pdu.content_str("displayname") {
                hero["displayname"] = json!(name);
            }
            if let Some(url) = pdu.content_str("avatar_url") {
                hero["avatar_url"] = json!(url);
            }
        }
        heroes.push(hero);
    }
    entry.insert("heroes".into(), json!(heroes));
    entry.insert("joined_count".into(), json!(joined));
    entry.insert("invited_count".into(), json!(invited));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn required_state_matching() {
        let mut rs = RequiredState::default();
        rs.add(&[
            ("m.room.name".into(), "".into()),
            ("m.room.member".into(), "$ME".into()),
            ("m.room.member".into(), "$LAZY".into()),
            ("m.space.child".into(), "*".into()),
        ]);
        assert!(rs.wants("m.room.name", "", "@me:x"));
        assert!(rs.wants("m.room.member", "@me:x", "@me:x"));
        assert!(!rs.wants("m.room.member", "@other:x", "@me:x"));
        assert!(rs.wants("m.space.child", "!a:x", "@me:x"));
        assert!(!rs.wants("m.room.topic", "", "@me:x"));
        assert!(rs.lazy_members());
        let mut all = RequiredState::default();
        all.add(&[("*".into(), "*".into())]);
        assert!(all.wants("m.room.member", "@other:x", "@me:x"));
        assert_ne!(rs.to_stored(), all.to_stored());
    }
}
