//! Reports of rooms, events and users, kept for the server's admins.

use sqlx::Row;

use super::{Db, Tx, now_ms};

/// A report about a room (`event_id` None) or one of its events.
pub async fn report_event(
    tx: &mut Tx,
    room_id: &str,
    event_id: Option<&str>,
    reporter: &str,
    reason: Option<&str>,
    score: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO event_reports (room_id, event_id, reporter, reason, score, received_ts)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(room_id)
    .bind(event_id)
    .bind(reporter)
    .bind(reason)
    .bind(score)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn report_user(tx: &mut Tx, target_user_id: &str, reporter: &str, reason: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO user_reports (target_user_id, reporter, reason, received_ts) VALUES ($1, $2, $3, $4)")
        .bind(target_user_id)
        .bind(reporter)
        .bind(reason)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A stored report about an event.
#[derive(Debug, Clone)]
pub struct EventReport {
    pub id: i64,
    pub room_id: String,
    pub event_id: String,
    pub reporter: String,
    pub reason: Option<String>,
    pub score: Option<i64>,
    pub received_ts: i64,
}

fn event_report_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<EventReport> {
    Ok(EventReport {
        id: r.try_get("id")?,
        room_id: r.try_get("room_id")?,
        event_id: r.try_get("event_id")?,
        reporter: r.try_get("reporter")?,
        reason: r.try_get("reason")?,
        score: r.try_get("score")?,
        received_ts: r.try_get("received_ts")?,
    })
}

/// One page of event reports (not room reports), newest first unless `oldest_first`,
/// optionally of one reporter or room; and how many match in all.
pub async fn list_event_reports(
    db: &Db,
    reporter: Option<&str>,
    room_id: Option<&str>,
    oldest_first: bool,
    from: i64,
    limit: i64,
) -> sqlx::Result<(Vec<EventReport>, i64)> {
    let filter = "WHERE event_id IS NOT NULL AND ($1 IS NULL OR reporter = $1) AND ($2 IS NULL OR room_id = $2)";
    let total: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT COUNT(*) FROM event_reports {filter}")))
        .bind(reporter)
        .bind(room_id)
        .fetch_one(db.read())
        .await?;
    let dir = if oldest_first { "ASC" } else { "DESC" };
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT id, room_id, event_id, reporter, reason, score, received_ts FROM event_reports {filter}
         ORDER BY received_ts {dir}, id {dir} LIMIT $3 OFFSET $4"
    )))
    .bind(reporter)
    .bind(room_id)
    .bind(limit)
    .bind(from)
    .fetch_all(db.read())
    .await?;
    Ok((rows.iter().map(event_report_from_row).collect::<sqlx::Result<_>>()?, total))
}

pub async fn event_report(db: &Db, id: i64) -> sqlx::Result<Option<EventReport>> {
    let row = sqlx::query(
        "SELECT id, room_id, event_id, reporter, reason, score, received_ts FROM event_reports
         WHERE id = $1 AND event_id IS NOT NULL",
    )
    .bind(id)
    .fetch_optional(db.read())
    .await?;
    row.as_ref().map(event_report_from_row).transpose()
}

pub async fn delete_event_report(tx: &mut Tx, id: i64) -> sqlx::Result<bool> {
    let res = sqlx::query("DELETE FROM event_reports WHERE id = $1 AND event_id IS NOT NULL")
        .bind(id)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected() == 1)
}
