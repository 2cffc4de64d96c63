//! Read receipts: the latest receipt of each (room, user, receipt type, thread), each with
//! the stream position of its last change.

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
        let mut receipt = json!({ "ts": ts });
        if !thread_id.is_empty() {
            receipt["thread_id"] = json!(thread_id);
        }
        // Indexing a null `Value` by a key makes it an object.
        content.entry(event_id).or_insert(Value::Null)[receipt_type.as_str()][user_id.as_str()] = receipt;
    }
    Ok(content)
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
