//! Server-side search over room events (spec "Server Side Search"): which text of an event
//! is indexed, and finding the events a user may read that match a search term.

use std::sync::Arc;

use ruma::events::TimelineEventType;
use ruma::{OwnedEventId, UserId};

use super::pdu::Pdu;
use crate::Services;
use crate::error::{Error, Result};
use crate::storage;
use crate::sync::filter::RoomEventFilter;

/// The indexed field of an event and its text: `content.body` of messages,
/// `content.name` and `content.topic` of room names and topics.
pub fn searchable(pdu: &Pdu) -> Option<(&'static str, String)> {
    let (key, field) = match pdu.kind {
        TimelineEventType::RoomMessage => ("content.body", "body"),
        TimelineEventType::RoomName => ("content.name", "name"),
        TimelineEventType::RoomTopic => ("content.topic", "topic"),
        _ => return None,
    };
    pdu.content_str(field).filter(|t| !t.is_empty()).map(|t| (key, t))
}

/// The words of a search term, lowercase (also the highlights of the results).
pub fn words(term: &str) -> Vec<String> {
    term.split(|c: char| !c.is_alphanumeric()).filter(|w| !w.is_empty()).map(str::to_lowercase).collect()
}

/// Matches considered per room: enough for any client's pages.
const PER_ROOM: i64 = 500;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Order {
    Rank,
    Recent,
}

/// A search of room events.
pub struct Query<'a> {
    pub term: &'a str,
    /// Fields to search (`content.body`, `content.name`, `content.topic`); empty: all.
    pub keys: &'a [String],
    pub filter: &'a RoomEventFilter,
    pub order: Order,
}

/// A readable matching event.
pub struct Found {
    pub rank: f64,
    pub stream_pos: i64,
    pub pdu: Arc<Pdu>,
}

/// Every event matching the query in the rooms `user` is joined to that history visibility
/// lets them read, in the requested order.
pub async fn search(svc: &Services, user: &UserId, q: &Query<'_>) -> Result<Vec<Found>> {
    let words = words(q.term);
    let mut hits = Vec::new();
    for room in storage::rooms::rooms_of_user(&svc.db, user.as_str(), "join").await? {
        if !q.filter.allows_room(&room) {
            continue;
        }
        for hit in storage::search::search_room(&svc.db, &room, &words, q.order == Order::Rank, PER_ROOM).await? {
            if q.keys.is_empty() || q.keys.contains(&hit.key) {
                hits.push(hit);
            }
        }
    }
    match q.order {
        Order::Rank => hits.sort_by(|a, b| b.rank.total_cmp(&a.rank).then(b.stream_pos.cmp(&a.stream_pos))),
        Order::Recent => hits.sort_by_key(|h| std::cmp::Reverse(h.stream_pos)),
    }
    let mut found = Vec::with_capacity(hits.len());
    for hit in hits {
        let Some(stored) = storage::events::get(&svc.db, &hit.event_id).await? else { continue };
        if super::visibility::filter(svc, user, true, vec![stored]).await?.is_empty() {
            continue;
        }
        let id = OwnedEventId::try_from(hit.event_id).map_err(|e| Error::Internal(e.into()))?;
        let Some(pdu) = super::get_pdu(svc, &id).await? else { continue };
        if q.filter.allows(&pdu) {
            found.push(Found { rank: hit.rank, stream_pos: hit.stream_pos, pdu });
        }
    }
    Ok(found)
}
