//! Sync filters uploaded by users.

use super::{Db, Tx};

/// Stores a filter and returns its ID, the next number for this user.
pub async fn create(tx: &mut Tx, user_id: &str, filter_json: &str) -> sqlx::Result<i64> {
    let next: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(filter_id), -1) + 1 FROM filters WHERE user_id = $1")
        .bind(user_id)
        .fetch_one(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO filters (user_id, filter_id, filter_json) VALUES ($1, $2, $3)")
        .bind(user_id)
        .bind(next)
        .bind(filter_json)
        .execute(&mut **tx)
        .await?;
    Ok(next)
}

pub async fn get(db: &Db, user_id: &str, filter_id: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT filter_json FROM filters WHERE user_id = $1 AND filter_id = $2")
        .bind(user_id)
        .bind(filter_id)
        .fetch_optional(db.read())
        .await
}
