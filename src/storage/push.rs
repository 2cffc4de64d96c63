//! Push rules and the notifying events behind unread counts and `/notifications`.

use super::{Db, Tx};

pub async fn ruleset(db: &Db, user_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT ruleset FROM push_rules WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db.read())
        .await
}

pub async fn put_ruleset(tx: &mut Tx, user_id: &str, ruleset: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO push_rules (user_id, ruleset) VALUES ($1, $2)
         ON CONFLICT (user_id) DO UPDATE SET ruleset = EXCLUDED.ruleset",
    )
    .bind(user_id)
    .bind(ruleset)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// An event that notified a user.
pub struct NewNotification<'a> {
    pub user_id: &'a str,
    pub stream_pos: i64,
    pub room_id: &'a str,
    pub thread_id: &'a str,
    pub event_id: &'a str,
    pub highlight: bool,
    pub actions: &'a str,
    pub ts: i64,
}

pub async fn insert_notification(tx: &mut Tx, n: &NewNotification<'_>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO push_notifications (user_id, stream_pos, room_id, thread_id, event_id, highlight, actions, ts)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (user_id, stream_pos) DO NOTHING",
    )
    .bind(n.user_id)
    .bind(n.stream_pos)
    .bind(n.room_id)
    .bind(n.thread_id)
    .bind(n.event_id)
    .bind(i64::from(n.highlight))
    .bind(n.actions)
    .bind(n.ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// SQL condition: notification `n` is read, i.e. the user has a read receipt (public or
/// private) on an event at or after it, unthreaded or in the notification's thread.
/// Threaded receipts carry 'main' or a thread root's event ID; anything else is unthreaded.
const IS_READ: &str = "EXISTS (
    SELECT 1 FROM receipts r JOIN events e ON e.event_id = r.event_id
    WHERE r.room_id = n.room_id AND r.user_id = n.user_id AND r.receipt_type IN ('m.read', 'm.read.private')
      AND e.stream_pos >= n.stream_pos
      AND (r.thread_id = n.thread_id OR (r.thread_id <> 'main' AND r.thread_id NOT LIKE '$%')))";

/// Unread (notification, highlight) counts of a user in a room, per thread ('main' for
/// the main timeline).
pub async fn unread_counts(db: &Db, user_id: &str, room_id: &str) -> sqlx::Result<Vec<(String, i64, i64)>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT n.thread_id, COUNT(*), CAST(COALESCE(SUM(n.highlight), 0) AS BIGINT) FROM push_notifications n
         WHERE n.user_id = $1 AND n.room_id = $2 AND NOT {IS_READ} GROUP BY n.thread_id"
    )))
    .bind(user_id)
    .bind(room_id)
    .fetch_all(db.read())
    .await
}

/// A stored notification with whether it has been read.
#[derive(sqlx::FromRow)]
pub struct Notification {
    pub stream_pos: i64,
    pub room_id: String,
    pub event_id: String,
    pub actions: String,
    pub ts: i64,
    pub read: i64,
}

/// A user's notifications before stream position `before`, newest first.
pub async fn notifications(
    db: &Db,
    user_id: &str,
    before: i64,
    only_highlight: bool,
    limit: i64,
) -> sqlx::Result<Vec<Notification>> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT n.stream_pos, n.room_id, n.event_id, n.actions, n.ts,
                CAST(CASE WHEN {IS_READ} THEN 1 ELSE 0 END AS BIGINT) AS read
         FROM push_notifications n
         WHERE n.user_id = $1 AND n.stream_pos < $2 AND ($3 = 0 OR n.highlight = 1)
         ORDER BY n.stream_pos DESC LIMIT $4"
    )))
    .bind(user_id)
    .bind(before)
    .bind(i64::from(only_highlight))
    .bind(limit)
    .fetch_all(db.read())
    .await
}
