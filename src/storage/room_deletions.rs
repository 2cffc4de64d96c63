//! Admin room deletions (`DELETE /_synapse/admin/v2/rooms/{room}`): what was asked, and their
//! status (`active`, `complete`, `failed`) with the report or error, for any process to answer.

use sqlx::Row;

use super::{Db, Tx};

/// Finished deletions are kept this long (Synapse's task scheduler keeps tasks a week).
pub const KEPT_MS: i64 = 7 * 24 * 3_600_000;

#[derive(Debug, Clone)]
pub struct Deletion {
    pub delete_id: String,
    pub room_id: String,
    /// JSON of `admin::rooms::Shutdown`.
    pub params: String,
    pub status: String,
    /// JSON of `admin::rooms::ShutdownReport`, once complete.
    pub result: Option<String>,
    pub error: Option<String>,
}

const COLUMNS: &str = "delete_id, room_id, params, status, result, error";

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Deletion> {
    Ok(Deletion {
        delete_id: r.try_get("delete_id")?,
        room_id: r.try_get("room_id")?,
        params: r.try_get("params")?,
        status: r.try_get("status")?,
        result: r.try_get("result")?,
        error: r.try_get("error")?,
    })
}

/// Records a deletion about to run, and forgets those finished before `expired_before`.
pub async fn start(tx: &mut Tx, delete_id: &str, room_id: &str, params: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM room_deletions WHERE status <> 'active' AND updated_ts < $1")
        .bind(now - KEPT_MS)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "INSERT INTO room_deletions (delete_id, room_id, params, status, updated_ts) VALUES ($1, $2, $3, 'active', $4)",
    )
    .bind(delete_id)
    .bind(room_id)
    .bind(params)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Ends a deletion: `complete` with its report, or `failed` with the error.
pub async fn finish(db: &Db, delete_id: &str, result: Result<&str, &str>, now: i64) -> sqlx::Result<()> {
    let (status, result, error) = match result {
        Ok(report) => ("complete", Some(report), None),
        Err(error) => ("failed", None, Some(error)),
    };
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE room_deletions SET status = $2, result = $3, error = $4, updated_ts = $5 WHERE delete_id = $1")
        .bind(delete_id)
        .bind(status)
        .bind(result)
        .bind(error)
        .bind(now)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

pub async fn get(db: &Db, delete_id: &str) -> sqlx::Result<Option<Deletion>> {
    let sql = format!("SELECT {COLUMNS} FROM room_deletions WHERE delete_id = $1");
    let row = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(delete_id).fetch_optional(db.read()).await?;
    row.as_ref().map(from_row).transpose()
}

/// The deletions of a room, oldest first.
pub async fn of_room(db: &Db, room_id: &str) -> sqlx::Result<Vec<Deletion>> {
    let sql = format!("SELECT {COLUMNS} FROM room_deletions WHERE room_id = $1 ORDER BY updated_ts, delete_id");
    let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(room_id).fetch_all(db.read()).await?;
    rows.iter().map(from_row).collect()
}

/// The IDs of the deletions not finished (running, or cut short by a crash).
pub async fn active(db: &Db) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT delete_id FROM room_deletions WHERE status = 'active'").fetch_all(db.read()).await
}
