//! State groups: the state at an event, stored as a delta on an earlier group, with a full
//! snapshot every `MAX_CHAIN` deltas so that loading one walks a bounded chain.

use std::collections::HashMap;

use super::{Db, Tx, next_stream_pos};

/// (event type, state key) -> event ID.
pub type StateRows = HashMap<(String, String), String>;

/// Longest chain of deltas before a full snapshot is stored.
const MAX_CHAIN: i64 = 64;

/// Stores the state `prev` + `delta` as a new group and returns its ID. `full` is the
/// resulting state, used when a snapshot is due.
pub async fn create_group(
    tx: &mut Tx,
    room_id: &str,
    prev_group: Option<i64>,
    delta: &StateRows,
    full: &StateRows,
) -> sqlx::Result<i64> {
    // Group IDs come from the global counter: unique and increasing across processes.
    let id = next_stream_pos(tx).await?;
    let prev_len: Option<i64> = match prev_group {
        Some(p) => {
            sqlx::query_scalar("SELECT chain_len FROM state_groups WHERE id = $1")
                .bind(p)
                .fetch_optional(&mut **tx)
                .await?
        }
        None => None,
    };
    let (prev, chain_len, rows) = match prev_len {
        Some(len) if len < MAX_CHAIN => (prev_group, len + 1, delta),
        _ => (None, 0, full),
    };
    sqlx::query("INSERT INTO state_groups (id, room_id, prev_group, chain_len) VALUES ($1, $2, $3, $4)")
        .bind(id)
        .bind(room_id)
        .bind(prev)
        .bind(chain_len)
        .execute(&mut **tx)
        .await?;
    for ((event_type, state_key), event_id) in rows {
        sqlx::query(
            "INSERT INTO state_group_entries (group_id, event_type, state_key, event_id) VALUES ($1, $2, $3, $4)",
        )
        .bind(id)
        .bind(event_type)
        .bind(state_key)
        .bind(event_id)
        .execute(&mut **tx)
        .await?;
    }
    Ok(id)
}

/// The full state of a group.
pub async fn load_group(db: &Db, group: i64) -> sqlx::Result<StateRows> {
    let rows: Vec<(i64, String, String, String)> = sqlx::query_as(
        "WITH RECURSIVE chain(id, prev, n) AS (
             SELECT id, prev_group, 0 FROM state_groups WHERE id = $1
             UNION ALL
             SELECT g.id, g.prev_group, c.n + 1 FROM state_groups g JOIN chain c ON g.id = c.prev
         )
         SELECT c.n, e.event_type, e.state_key, e.event_id
         FROM chain c JOIN state_group_entries e ON e.group_id = c.id
         ORDER BY c.n DESC",
    )
    .bind(group)
    .fetch_all(db.read())
    .await?;
    // Oldest first, so newer deltas override.
    Ok(rows.into_iter().map(|(_, t, k, e)| ((t, k), e)).collect())
}
