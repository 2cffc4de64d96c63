//! Purging a room's history before a timeline position (retention and the admin API's
//! `purge_history`), as Synapse's `purge_history` does: non-state events go; state events
//! stay, as outliers (out of the timeline), because the state and auth of the events kept
//! refer to them; the room's forward extremities stay in the timeline so that new events
//! still have something to follow.

use super::{Db, Tx};

/// What a purge did.
#[derive(Debug, Default)]
pub struct Purged {
    /// The events deleted.
    pub deleted: Vec<String>,
    /// The events taken out of the timeline but kept (state events, and local events when
    /// those are kept).
    pub outliers: u64,
}

/// The room's timeline events before `before` (a stream position) but its forward
/// extremities. `$1` is the room, `$2` the position.
const BEFORE: &str = "room_id = $1 AND stream_pos IS NOT NULL AND stream_pos < $2
     AND event_id NOT IN (SELECT event_id FROM room_extremities WHERE room_id = $1)";

/// Deletes the room's non-state events before position `before` (with their edges, auth
/// edges, relations, transaction IDs, search entries and notifications) but its forward
/// extremities, and takes its state events before it out of the timeline. `kept_senders`
/// is a LIKE pattern of senders whose events are kept as outliers instead of deleted (`''`
/// matches no sender: all go). Non-state outliers (those kept by an earlier purge) go when
/// they are deeper in the DAG than the events kept. State groups only the deleted events
/// used go too.
pub async fn history(tx: &mut Tx, room_id: &str, before: i64, kept_senders: &str) -> sqlx::Result<Purged> {
    let kept_depth: Option<i64> = sqlx::query_scalar(
        "SELECT MIN(depth) FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL AND stream_pos >= $2",
    )
    .bind(room_id)
    .bind(before)
    .fetch_one(&mut **tx)
    .await?;
    let deletable = "room_id = $1 AND state_key IS NULL AND sender NOT LIKE $3
         AND event_id NOT IN (SELECT event_id FROM room_extremities WHERE room_id = $1)
         AND ((stream_pos IS NOT NULL AND stream_pos < $2) OR (stream_pos IS NULL AND depth < $4))";
    let kept_depth = kept_depth.unwrap_or(i64::MAX);
    let doomed: Vec<(String, Option<i64>)> =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("SELECT event_id, state_group FROM events WHERE {deletable}")))
            .bind(room_id)
            .bind(before)
            .bind(kept_senders)
            .bind(kept_depth)
            .fetch_all(&mut **tx)
            .await?;
    // Out of the timeline, out of search and notifications too (kept or not).
    for table in ["event_search", "push_notifications"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE room_id = $1 AND event_id IN (SELECT event_id FROM events WHERE {BEFORE})"
        )))
        .bind(room_id)
        .bind(before)
        .execute(&mut **tx)
        .await?;
    }
    // Transaction IDs are found by their key (the events keep it), relations by event; then
    // the events go.
    let txns = format!(
        "DELETE FROM event_txns WHERE (user_id, device_id, room_id, txn_id) IN
         (SELECT sender, txn_device_id, room_id, txn_id FROM events WHERE txn_id IS NOT NULL AND {deletable})"
    );
    let relations =
        format!("DELETE FROM event_relations WHERE event_id IN (SELECT event_id FROM events WHERE {deletable})");
    let events = format!("DELETE FROM events WHERE {deletable}");
    for delete in [txns, relations, events] {
        sqlx::query(sqlx::AssertSqlSafe(delete))
            .bind(room_id)
            .bind(before)
            .bind(kept_senders)
            .bind(kept_depth)
            .execute(&mut **tx)
            .await?;
    }
    let outliers =
        sqlx::query(sqlx::AssertSqlSafe(format!("UPDATE events SET stream_pos = NULL, outlier = 1 WHERE {BEFORE}")))
            .bind(room_id)
            .bind(before)
            .execute(&mut **tx)
            .await?
            .rows_affected();

    let mut groups: Vec<i64> = doomed.iter().filter_map(|(_, g)| *g).collect();
    groups.sort_unstable();
    groups.dedup();
    for group in groups {
        delete_group_if_unused(tx, room_id, group).await?;
    }
    Ok(Purged { deleted: doomed.into_iter().map(|(id, _)| id).collect(), outliers })
}

/// Deletes a state group nothing refers to any more: no event's state, no later group's
/// base, not the room's current or starting state.
async fn delete_group_if_unused(tx: &mut Tx, room_id: &str, group: i64) -> sqlx::Result<()> {
    let used: Option<i64> = sqlx::query_scalar(
        "SELECT 1 WHERE EXISTS (SELECT 1 FROM events WHERE room_id = $1 AND state_group = $2)
            OR EXISTS (SELECT 1 FROM state_groups WHERE prev_group = $2)
            OR EXISTS (SELECT 1 FROM rooms WHERE room_id = $1 AND (current_state_group = $2 OR base_state_group = $2))",
    )
    .bind(room_id)
    .bind(group)
    .fetch_optional(&mut **tx)
    .await?;
    if used.is_none() {
        sqlx::query("DELETE FROM state_group_entries WHERE group_id = $1").bind(group).execute(&mut **tx).await?;
        sqlx::query("DELETE FROM state_groups WHERE id = $1").bind(group).execute(&mut **tx).await?;
    }
    Ok(())
}

/// The timeline position of the room's first event sent at or after `ts` (ms): where a
/// purge of what is older than `ts` stops.
pub async fn first_pos_since(db: &Db, room_id: &str, ts: i64) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar(
        "SELECT MIN(stream_pos) FROM events WHERE room_id = $1 AND stream_pos IS NOT NULL AND origin_server_ts >= $2",
    )
    .bind(room_id)
    .bind(ts)
    .fetch_one(db.read())
    .await
}
