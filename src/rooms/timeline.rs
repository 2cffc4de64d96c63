//! Reading a room's timeline: pagination in stream order with filters and history
//! visibility, for /messages, /context and /sync.

use std::sync::Arc;

use ruma::{RoomId, UserId};

use super::pdu::Pdu;
use crate::Services;
use crate::error::Result;
use crate::storage;
use crate::sync::filter::RoomEventFilter;

/// A page of events and where the next page starts.
pub struct Page {
    /// In the direction of travel (newest first when going backwards).
    pub events: Vec<Arc<Pdu>>,
    /// The stream position of each event of `events`.
    pub positions: Vec<i64>,
    /// The position to continue from; `None` when there is nothing further.
    pub next: Option<i64>,
}

/// Events between two positions that `user` may see and the filter allows. Going backwards
/// from `from` covers positions <= `from` down to (excluded) `to`; forwards, positions > `from`
/// up to `to` (included).
#[allow(clippy::too_many_arguments)]
pub async fn paginate(
    svc: &Services,
    room_id: &RoomId,
    user: &UserId,
    currently_joined: bool,
    from: i64,
    to: Option<i64>,
    backwards: bool,
    limit: usize,
    filter: &RoomEventFilter,
) -> Result<Page> {
    // The first read asks for one page and one more row, which tells whether the page is
    // cut short (events are seldom filtered out, and rows carry the event JSON); when some
    // were, each further read asks for twice as many.
    let mut batch = (limit + 1).clamp(2, MAX_BATCH) as i64;
    let mut events = Vec::new();
    let mut event_positions = Vec::new();
    let mut cursor = from;
    // Where the page ends: just past its last event.
    let mut end = from;
    loop {
        let (after, up_to) = match backwards {
            true => (to.unwrap_or(i64::MIN), cursor),
            false => (cursor, to.unwrap_or(i64::MAX)),
        };
        // The latest positions are mostly known in memory (a woken /sync reads only those).
        let (rows, from_db) = match svc.notifier.recent.timeline_range(room_id.as_str(), after, up_to, batch, backwards)
        {
            Some(rows) => (rows, false),
            None => (
                storage::events::timeline_range(&svc.db, room_id.as_str(), after, up_to, batch, backwards).await?,
                true,
            ),
        };
        let exhausted = (rows.len() as i64) < batch;
        let positions: Vec<i64> = rows.iter().filter_map(|r| r.stream_pos).collect();
        let visible = super::visibility::filter(svc, user, currently_joined, rows).await?;
        let mut visible = visible.into_iter().peekable();
        for pos in positions {
            let row = match visible.peek() {
                Some(r) if r.stream_pos == Some(pos) => visible.next(),
                _ => None,
            };
            cursor = if backwards { pos - 1 } else { pos };
            let Some(row) = row else { continue };
            let id = ruma::OwnedEventId::try_from(row.event_id.as_str())
                .map_err(|e| crate::error::Error::Internal(e.into()))?;
            // A row read from the database holds the event as stored (redactions included), so
            // an event not in the cache is not read again. It is not cached either: a redaction
            // may have forgotten it since the row was read. (The log's rows keep the JSON as
            // appended; their redactions are seen through the cache.)
            let pdu = match from_db {
                true => match svc.rooms.cached_event(&id) {
                    Some(pdu) => pdu,
                    None => Arc::new(super::pdu_of_stored(id, &row)?),
                },
                false => match super::get_pdu(svc, &id).await? {
                    Some(pdu) => pdu,
                    None => continue,
                },
            };
            if filter.allows(&pdu) {
                if events.len() >= limit {
                    // An event the full page cannot hold: there is more.
                    return Ok(Page { events, positions: event_positions, next: Some(end) });
                }
                events.push(pdu);
                event_positions.push(pos);
                end = cursor;
            }
        }
        if exhausted {
            return Ok(Page { events, positions: event_positions, next: None });
        }
        batch = (batch * 2).min(MAX_BATCH as i64);
    }
}

/// Most timeline rows one read asks for.
const MAX_BATCH: usize = 500;
