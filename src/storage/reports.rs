//! Reports of rooms, events and users, kept for the server's admins.

use super::{Tx, now_ms};

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
