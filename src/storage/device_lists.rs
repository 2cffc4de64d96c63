//! Device-list changes: which user's device keys, cross-signing keys or signatures changed at
//! which stream position (`/sync` `device_lists.changed`, `/keys/changes`).

use super::{Db, Tx, next_stream_pos};

/// Records that a user's device list changed, at a new stream position.
pub async fn record_change(tx: &mut Tx, user_id: &str) -> sqlx::Result<i64> {
    let pos = next_stream_pos(tx).await?;
    sqlx::query("INSERT INTO device_list_changes (stream_pos, user_id) VALUES ($1, $2)")
        .bind(pos)
        .bind(user_id)
        .execute(&mut **tx)
        .await?;
    Ok(pos)
}

/// Users whose device lists changed at stream positions in `(from, to]`, sorted.
pub async fn changed_users(db: &Db, from: i64, to: i64) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT DISTINCT user_id FROM device_list_changes WHERE stream_pos > $1 AND stream_pos <= $2 ORDER BY user_id",
    )
    .bind(from)
    .bind(to)
    .fetch_all(db.read())
    .await
}

/// The stream position of a user's last device-list change (the `stream_id` of the
/// federation device list), if any.
pub async fn last_change(db: &Db, user_id: &str) -> sqlx::Result<Option<i64>> {
    sqlx::query_scalar("SELECT MAX(stream_pos) FROM device_list_changes WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(db.read())
        .await
}

/// The stream positions of a user's last `limit` device-list changes, newest first.
pub async fn last_changes(db: &Db, user_id: &str, limit: i64) -> sqlx::Result<Vec<i64>> {
    sqlx::query_scalar(
        "SELECT stream_pos FROM device_list_changes WHERE user_id = $1 ORDER BY stream_pos DESC LIMIT $2",
    )
    .bind(user_id)
    .bind(limit)
    .fetch_all(db.read())
    .await
}
