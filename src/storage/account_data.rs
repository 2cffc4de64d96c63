//! Per-user account data, global (`room_id` '') and per room.

use super::{Db, Tx, next_stream_pos};

pub async fn put(tx: &mut Tx, user_id: &str, room_id: &str, data_type: &str, content: &str) -> sqlx::Result<i64> {
    let pos = next_stream_pos(tx).await?;
    sqlx::query(
        "INSERT INTO account_data (user_id, room_id, data_type, content, stream_pos) VALUES ($1, $2, $3, $4, $5)
         ON CONFLICT (user_id, room_id, data_type)
         DO UPDATE SET content = EXCLUDED.content, stream_pos = EXCLUDED.stream_pos",
    )
    .bind(user_id)
    .bind(room_id)
    .bind(data_type)
    .bind(content)
    .bind(pos)
    .execute(&mut **tx)
    .await?;
    Ok(pos)
}

pub async fn get(db: &Db, user_id: &str, room_id: &str, data_type: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT content FROM account_data WHERE user_id = $1 AND room_id = $2 AND data_type = $3")
        .bind(user_id)
        .bind(room_id)
        .bind(data_type)
        .fetch_optional(db.read())
        .await
}

/// Account data changed after stream position `since`: (room_id, type, content).
pub async fn changed_since(db: &Db, user_id: &str, since: i64) -> sqlx::Result<Vec<(String, String, String)>> {
    sqlx::query_as(
        "SELECT room_id, data_type, content FROM account_data WHERE user_id = $1 AND stream_pos > $2
         ORDER BY stream_pos",
    )
    .bind(user_id)
    .bind(since)
    .fetch_all(db.read())
    .await
}
