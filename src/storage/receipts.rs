//! Read receipts: the latest receipt of each (room, user, receipt type, thread), each with
//! the stream position of its last change.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::{Db, Tx, next_stream_pos};

/// A receipt to store; `thread_id` None is an unthreaded receipt (stored as '').
pub struct NewReceipt<'a> {
    pub room_id: &'a str,
    pub user_id: &'a str,
    pub receipt_type: &'a str,
    pub thread_id: Option<&'a str>,
    pub event_id: &'a str,
    pub ts: i64,
}

/// Stores a receipt unless the user's receipt of that type and thread already points at the
/// same or a later event (receipts never move back, as in Synapse). Returns whether it moved.
pub async fn put(tx: &mut Tx, r: &NewReceipt<'_>) -> sqlx::Result<bool> {
    let pos = next_stream_pos(tx).await?;
    let res = sqlx::query(
        "INSERT INTO receipts (room_id, user_id, receipt_type, thread_id, event_id, ts, stream_pos)
         VALUES ($1, $2, $3, $4, $5, $6, $7)
         ON CONFLICT (room_id, user_id, receipt_type, thread_id)
         DO UPDATE SET event_id = EXCLUDED.event_id, ts = EXCLUDED.ts, stream_pos = EXCLUDED.stream_pos
         WHERE COALESCE((SELECT stream_pos FROM events WHERE event_id = receipts.event_id), 0)
             < COALESCE((SELECT stream_pos FROM events WHERE event_id = EXCLUDED.event_id), 0)",
    )
    .bind(r.room_id)
    .bind(r.user_id)
    .bind(r.receipt_type)
    .bind(r.thread_id.unwrap_or(""))
    .bind(r.event_id)
    .bind(r.ts)
    .bind(pos)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// The receipts of a room changed at positions in (`after`, `up_to`], as the content of an
/// `m.receipt` event: `{event_id: {receipt_type: {user_id: {ts, thread_id?}}}}`. Private
/// receipts (`m.read.private`) are shown to their owner `viewer` only. Empty when none.
pub async fn in_range(
    db: &Db,
    room_id: &str,
    viewer: &str,
    after: i64,
    up_to: i64,
) -> sqlx::Result<Map<String, Value>> {
    let rows: Vec<(String, String, String, String, i64)> = sqlx::query_as(
        "SELECT user_id, receipt_type, thread_id, event_id, ts FROM receipts
         WHERE room_id = $1 AND stream_pos > $2 AND stream_pos <= $3
           AND (receipt_type <> 'm.read.private' OR user_id = $4)
         ORDER BY stream_pos",
    )
    .bind(room_id)
    .bind(after)
    .bind(up_to)
    .bind(viewer)
    .fetch_all(db.read())
    .await?;
    let mut content = Map::new();
    for (user_id, receipt_type, thread_id, event_id, ts) in rows {
        add_receipt(&mut content, user_id, receipt_type, thread_id, event_id, ts);
    }
    Ok(content)
}

/// Adds a receipt row to `m.receipt` content.
fn add_receipt(content: &mut Map<String, Value>, user: String, kind: String, thread: String, event: String, ts: i64) {
    let mut receipt = json!({ "ts": ts });
    if !thread.is_empty() {
        receipt["thread_id"] = json!(thread);
    }
    // Indexing a null `Value` by a key makes it an object.
    content.entry(event).or_insert(Value::Null)[kind.as_str()][user.as_str()] = receipt;
}

/// Most rooms named in one query (bind parameters are limited).
const ROOMS_PER_QUERY: usize = 500;

/// [`latest`] of several rooms in one statement (for an initial sync), by room; rooms
/// without receipts are left out.
pub async fn latest_in_rooms(
    db: &Db,
    room_ids: &[&str],
    viewer: &str,
    up_to: i64,
) -> sqlx::Result<HashMap<String, Map<String, Value>>> {
    let mut by_room: HashMap<String, Map<String, Value>> = HashMap::new();
    for batch in room_ids.chunks(ROOMS_PER_QUERY) {
        let in_list = (0..batch.len()).map(|i| format!("${}", i + 3)).collect::<Vec<_>>().join(", ");
        let sql = format!(
            "SELECT room_id, user_id, receipt_type, thread_id, event_id, ts FROM receipts
             WHERE room_id IN ({in_list}) AND stream_pos <= $1 AND (receipt_type <> 'm.read.private' OR user_id = $2)
             ORDER BY stream_pos"
        );
        let mut query = sqlx::query_as::<_, (String, String, String, String, String, i64)>(sqlx::AssertSqlSafe(sql))
            .bind(up_to)
            .bind(viewer);
        for room in batch {
            query = query.bind(*room);
        }
        for (room, user_id, receipt_type, thread_id, event_id, ts) in query.fetch_all(db.read()).await? {
            add_receipt(by_room.entry(room).or_default(), user_id, receipt_type, thread_id, event_id, ts);
        }
    }
    Ok(by_room)
}

/// The latest receipts of a room as of position `up_to` (for an initial sync), in the shape
/// of [`in_range`]: only the latest receipt of each user, type and thread is kept.
pub async fn latest(db: &Db, room_id: &str, viewer: &str, up_to: i64) -> sqlx::Result<Map<String, Value>> {
    in_range(db, room_id, viewer, i64::MIN, up_to).await
}

/// Rooms whose receipts changed at positions in (`after`, `up_to`].
pub async fn rooms_changed(db: &Db, after: i64, up_to: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT room_id FROM receipts WHERE stream_pos > $1 AND stream_pos <= $2")
        .bind(after)
        .bind(up_to)
        .fetch_all(db.read())
        .await
}
