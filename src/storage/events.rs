//! Events: the PDUs of every room, their DAG edges, transaction IDs and relations.

use std::collections::HashSet;
use std::sync::Arc;

use sqlx::Row;

use super::script::Script;
use super::{Db, DbKind, Tx};

/// An event as stored.
#[derive(Debug, Clone)]
pub struct StoredEvent {
    pub event_id: String,
    pub room_id: String,
    /// Shared with the parsed event, and between the syncs a recent event is sent to.
    pub json: Arc<str>,
    pub stream_pos: Option<i64>,
    pub state_group: Option<i64>,
    pub redacted_by: Option<String>,
    pub rejected: bool,
    pub event_type: String,
    pub state_key: Option<String>,
}

const COLUMNS: &str = "event_id, room_id, json, stream_pos, state_group, redacted_by, rejected, event_type, state_key";

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<StoredEvent> {
    Ok(StoredEvent {
        event_id: r.try_get("event_id")?,
        room_id: r.try_get("room_id")?,
        json: r.try_get::<String, _>("json")?.into(),
        stream_pos: r.try_get("stream_pos")?,
        state_group: r.try_get("state_group")?,
        redacted_by: r.try_get("redacted_by")?,
        rejected: r.try_get::<Option<String>, _>("rejected")?.is_some(),
        event_type: r.try_get("event_type")?,
        state_key: r.try_get("state_key")?,
    })
}

/// A new event to store.
pub struct NewEvent<'a> {
    pub event_id: &'a str,
    pub room_id: &'a str,
    pub stream_pos: Option<i64>,
    pub depth: i64,
    pub event_type: &'a str,
    pub state_key: Option<&'a str>,
    pub sender: &'a str,
    pub origin_server_ts: i64,
    pub json: &'a str,
    pub state_group: Option<i64>,
    /// (rel_type, target event ID) of `m.relates_to`.
    pub relation: Option<(&'a str, &'a str)>,
    pub soft_failed: bool,
}

/// Stores an event outside the timeline (`stream_pos` None), unless it is already known:
/// the auth chain and state of a room joined over federation.
pub async fn insert_outlier(tx: &mut Tx, e: &NewEvent<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO events (event_id, room_id, stream_pos, depth, event_type, state_key, sender,
                             origin_server_ts, json, outlier, state_group, soft_failed)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) ON CONFLICT (event_id) DO NOTHING",
    )
    .bind(e.event_id)
    .bind(e.room_id)
    .bind(e.stream_pos)
    .bind(e.depth)
    .bind(e.event_type)
    .bind(e.state_key)
    .bind(e.sender)
    .bind(e.origin_server_ts)
    .bind(e.json)
    .bind(e.stream_pos.is_none() as i64)
    .bind(e.state_group)
    .bind(e.soft_failed as i64)
    .execute(&mut **tx)
    .await?;
    if let Some((rel_type, target)) = e.relation {
        sqlx::query(
            "INSERT INTO event_relations (event_id, relates_to, rel_type, room_id) VALUES ($1, $2, $3, $4)
             ON CONFLICT DO NOTHING",
        )
        .bind(e.event_id)
        .bind(target)
        .bind(rel_type)
        .bind(e.room_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}

/// What appending an event to its room's timeline writes besides the event row.
pub struct TimelineEntry<'a> {
    /// `stream_pos` is ignored: `append` takes the next position.
    pub event: NewEvent<'a>,
    /// (device, transaction ID) of a local client's send: kept on the event's row (its
    /// sender's device sees it in `unsigned`) and, for retries, in `event_txns`.
    pub txn: Option<(&'a str, &'a str)>,
    /// (field, text) for the full-text index.
    pub search: Option<(&'a str, &'a str)>,
    /// Whether the event raises the room's bump stamp (sliding sync).
    pub bump: bool,
    /// The event's prev events, which it replaces as the room's forward extremities (None
    /// when soft-failed: it does not become one). The DAG's edges are not stored apart:
    /// they are read from the PDUs.
    pub replaces_extremities: Option<&'a [ruma::OwnedEventId]>,
}

/// The script that appends an event to its room's timeline at the next stream position, with
/// its relation, transaction ID, search text, bump stamp and the room's new forward
/// extremities (`rooms::append` adds what else the append writes, and runs it).
pub fn append_script(kind: DbKind, entry: &TimelineEntry<'_>) -> Script {
    let e = &entry.event;
    let mut script = Script::new(kind);
    let pos = script.pos();
    let event_id = script.arg(e.event_id);
    let room_id = script.arg(e.room_id);
    let values = [
        script.arg(e.depth),
        script.arg(e.event_type),
        script.arg(e.state_key),
        script.arg(e.sender),
        script.arg(e.origin_server_ts),
        script.arg(e.json),
        script.arg(e.state_group),
        script.arg(e.soft_failed as i64),
        script.arg(entry.txn.map(|(device, _)| device)),
        script.arg(entry.txn.map(|(_, txn_id)| txn_id)),
    ]
    .join(", ");
    script.push(format!(
        "INSERT INTO events (event_id, room_id, stream_pos, depth, event_type, state_key, sender,
                             origin_server_ts, json, state_group, soft_failed, txn_device_id, txn_id, outlier)
         VALUES ({event_id}, {room_id}, {pos}, {values}, 0)"
    ));
    if let Some((rel_type, target)) = e.relation {
        let (target, rel_type) = (script.arg(target), script.arg(rel_type));
        script.push(format!(
            "INSERT INTO event_relations (event_id, relates_to, rel_type, room_id)
             VALUES ({event_id}, {target}, {rel_type}, {room_id}) ON CONFLICT DO NOTHING"
        ));
    }
    if let Some((device, txn_id)) = entry.txn {
        let values = [e.sender, device, txn_id].into_iter().map(|v| script.arg(v)).collect::<Vec<_>>().join(", ");
        script.push(format!(
            "INSERT INTO event_txns (user_id, device_id, txn_id, room_id, event_id)
             VALUES ({values}, {room_id}, {event_id}) ON CONFLICT DO NOTHING"
        ));
    }
    if let Some((key, text)) = entry.search {
        let (key, text) = (script.arg(key), script.arg(text));
        script.push(super::search::index_statement(kind, &event_id, &room_id, &key, &text));
    }
    if entry.bump {
        script.push(super::sliding_sync::bump_statement(&room_id, pos));
    }
    if let Some(prev_events) = entry.replaces_extremities {
        let prevs: Vec<String> = prev_events.iter().map(|id| script.arg(id.as_str())).collect();
        for statement in super::rooms::advance_extremities_statements(&room_id, &prevs, &event_id) {
            script.push(statement);
        }
    }
    script
}

/// Puts a stored event that is not in the timeline (an outlier, or just backfilled) at a
/// timeline position, with the state at it.
pub async fn place_in_timeline(tx: &mut Tx, event_id: &str, stream_pos: i64, state_group: i64) -> sqlx::Result<()> {
    sqlx::query(
        "UPDATE events SET stream_pos = $1, state_group = $2, outlier = 0 WHERE event_id = $3 AND stream_pos IS NULL",
    )
    .bind(stream_pos)
    .bind(state_group)
    .bind(event_id)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The earliest event of a room's timeline here (where backfilling goes on from).
pub async fn earliest_in_timeline(db: &Db, room_id: &str) -> sqlx::Result<Option<StoredEvent>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL ORDER BY stream_pos ASC LIMIT 1"
    )))
    .bind(room_id)
    .fetch_optional(db.read())
    .await?;
    row.as_ref().map(from_row).transpose()
}

/// Which of some events are in a timeline (not unknown, nor known only as outliers).
pub async fn in_timeline(db: &Db, event_ids: &[&str]) -> sqlx::Result<HashSet<String>> {
    let mut found = HashSet::new();
    for batch in event_ids.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "SELECT event_id FROM events WHERE stream_pos IS NOT NULL AND event_id IN ({})",
            placeholders(1, batch.len())
        );
        let mut query = sqlx::query_scalar::<_, String>(sqlx::AssertSqlSafe(sql));
        for id in batch {
            query = query.bind(*id);
        }
        found.extend(query.fetch_all(db.read()).await?);
    }
    Ok(found)
}

pub async fn get(db: &Db, event_id: &str) -> sqlx::Result<Option<StoredEvent>> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!("SELECT {COLUMNS} FROM events WHERE event_id = $1")))
        .bind(event_id)
        .fetch_optional(db.read())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// Timeline events of a room (not outliers, rejected or soft-failed) with positions in
/// (`after`, `up_to`], the `limit` newest (`newest_first`) or oldest.
pub async fn timeline_range(
    db: &Db,
    room_id: &str,
    after: i64,
    up_to: i64,
    limit: i64,
    newest_first: bool,
) -> sqlx::Result<Vec<StoredEvent>> {
    let order = if newest_first { "DESC" } else { "ASC" };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM events
         WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3 AND rejected IS NULL AND soft_failed = 0
         ORDER BY stream_pos {order} LIMIT $4"
    )))
    .bind(room_id)
    .bind(after)
    .bind(up_to)
    .bind(limit)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Rooms among all that have timeline events with positions in (`after`, `up_to`].
pub async fn rooms_with_news(db: &Db, after: i64, up_to: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT room_id FROM events WHERE stream_pos > $1 AND stream_pos <= $2")
        .bind(after)
        .bind(up_to)
        .fetch_all(db.read())
        .await
}

/// The state group after the newest timeline event of a room at or before `up_to`: None
/// when the room has no such event, Some(None) when that event has no state group.
pub async fn group_at_or_before(db: &Db, room_id: &str, up_to: i64) -> sqlx::Result<Option<Option<i64>>> {
    sqlx::query_scalar(
        "SELECT state_group FROM events WHERE room_id = $1 AND stream_pos <= $2 ORDER BY stream_pos DESC LIMIT 1",
    )
    .bind(room_id)
    .bind(up_to)
    .fetch_optional(db.read())
    .await
}

/// The event a client's transaction ID already produced.
pub async fn txn_event(
    db: &Db,
    user_id: &str,
    device_id: &str,
    room_id: &str,
    txn_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT event_id FROM event_txns WHERE user_id = $1 AND device_id = $2 AND room_id = $3 AND txn_id = $4",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(room_id)
    .bind(txn_id)
    .fetch_optional(db.read())
    .await
}

/// Most event IDs named in one query (bind parameters are limited).
const IDS_PER_QUERY: usize = 500;

/// `$first, $first+1, ...` for `count` bind parameters.
fn placeholders(first: usize, count: usize) -> String {
    (first..first + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The transaction IDs some events were sent with from `device_id` of `user_id`:
/// (event_id, txn_id).
pub async fn txns_of_events(
    db: &Db,
    event_ids: &[&str],
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for batch in event_ids.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "SELECT event_id, txn_id FROM events WHERE sender = $1 AND txn_device_id = $2 AND event_id IN ({})",
            placeholders(3, batch.len())
        );
        let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql)).bind(user_id).bind(device_id);
        for id in batch {
            query = query.bind(*id);
        }
        found.extend(query.fetch_all(db.read()).await?);
    }
    Ok(found)
}

/// The `m.thread` replies of any of `roots`, oldest first: (root, reply).
pub async fn thread_replies(db: &Db, roots: &[&str]) -> sqlx::Result<Vec<(String, String)>> {
    let mut found = Vec::new();
    for batch in roots.chunks(IDS_PER_QUERY) {
        let sql = format!(
            "SELECT r.relates_to, r.event_id FROM event_relations r JOIN events e ON e.event_id = r.event_id
             WHERE r.rel_type = 'm.thread' AND r.relates_to IN ({})
               AND e.stream_pos IS NOT NULL AND e.rejected IS NULL
             ORDER BY e.stream_pos",
            placeholders(1, batch.len())
        );
        let mut query = sqlx::query_as::<_, (String, String)>(sqlx::AssertSqlSafe(sql));
        for id in batch {
            query = query.bind(*id);
        }
        found.extend(query.fetch_all(db.read()).await?);
    }
    Ok(found)
}

/// Replaces an event's JSON with its redacted form.
pub async fn redact(tx: &mut Tx, event_id: &str, redacted_json: &str, redacted_by: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE events SET json = $1, redacted_by = $2 WHERE event_id = $3")
        .bind(redacted_json)
        .bind(redacted_by)
        .bind(event_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Events relating to `target`, oldest first: (event_id, rel_type).
pub async fn relations(db: &Db, target: &str) -> sqlx::Result<Vec<(String, String, i64)>> {
    sqlx::query_as(
        "SELECT r.event_id, r.rel_type, e.stream_pos FROM event_relations r JOIN events e ON e.event_id = r.event_id
         WHERE r.relates_to = $1 AND e.stream_pos IS NOT NULL AND e.rejected IS NULL
         ORDER BY e.stream_pos",
    )
    .bind(target)
    .fetch_all(db.read())
    .await
}

/// Thread roots of a room with the position of their latest reply, latest first.
pub async fn thread_roots(db: &Db, room_id: &str) -> sqlx::Result<Vec<(String, i64)>> {
    sqlx::query_as(
        "SELECT r.relates_to, MAX(e.stream_pos) AS latest FROM event_relations r
         JOIN events e ON e.event_id = r.event_id
         WHERE r.room_id = $1 AND r.rel_type = 'm.thread' AND e.rejected IS NULL
         GROUP BY r.relates_to ORDER BY latest DESC",
    )
    .bind(room_id)
    .fetch_all(db.read())
    .await
}

/// The timeline event closest to `ts` in a direction: (event_id, origin_server_ts).
pub async fn closest_to_ts(db: &Db, room_id: &str, ts: i64, forwards: bool) -> sqlx::Result<Option<(String, i64)>> {
    let sql = if forwards {
        "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts >= $2
         AND stream_pos IS NOT NULL ORDER BY origin_server_ts ASC, stream_pos ASC LIMIT 1"
    } else {
        "SELECT event_id, origin_server_ts FROM events WHERE room_id = $1 AND origin_server_ts <= $2
         AND stream_pos IS NOT NULL ORDER BY origin_server_ts DESC, stream_pos DESC LIMIT 1"
    };
    sqlx::query_as(sql).bind(room_id).bind(ts).fetch_optional(db.read()).await
}

/// Membership events of a user with positions in (`after`, `up_to`]: (room_id, membership json).
pub async fn membership_changes(db: &Db, user_id: &str, after: i64, up_to: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT room_id FROM events
         WHERE state_key = $1 AND event_type = 'm.room.member' AND stream_pos > $2 AND stream_pos <= $3",
    )
    .bind(user_id)
    .bind(after)
    .bind(up_to)
    .fetch_all(db.read())
    .await
}

/// Membership events with positions in (`after`, `up_to`] in rooms where `user_id` has a
/// membership: (member, membership).
pub async fn member_changes_in_rooms_of(
    db: &Db,
    user_id: &str,
    after: i64,
    up_to: i64,
) -> sqlx::Result<Vec<(String, String)>> {
    let rows: Vec<(Option<String>, String)> = sqlx::query_as(
        "SELECT e.state_key, e.json FROM events e
         JOIN current_state mine ON mine.room_id = e.room_id
              AND mine.event_type = 'm.room.member' AND mine.state_key = $1
         WHERE e.event_type = 'm.room.member' AND e.stream_pos > $2 AND e.stream_pos <= $3
         ORDER BY e.stream_pos",
    )
    .bind(user_id)
    .bind(after)
    .bind(up_to)
    .fetch_all(db.read())
    .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(key, json)| {
            let membership =
                serde_json::from_str::<serde_json::Value>(&json).ok()?["content"]["membership"].as_str()?.to_owned();
            Some((key?, membership))
        })
        .collect())
}

/// The JSON of the events of a room that mention a `mxc://` URI (media quarantine).
pub async fn jsons_mentioning_media(db: &Db, room_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT json FROM events WHERE room_id = $1 AND json LIKE '%mxc://%'")
        .bind(room_id)
        .fetch_all(db.read())
        .await
}
