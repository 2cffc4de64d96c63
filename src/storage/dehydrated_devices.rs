//! Dehydrated devices (MSC3814): the one device per user kept for a later login.

use super::{Db, Tx};

/// The user's dehydrated device: (device ID, device data as JSON).
pub async fn get(db: &Db, user_id: &str) -> sqlx::Result<Option<(String, String)>> {
    sqlx::query_as("SELECT device_id, device_data FROM dehydrated_devices WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db.read())
        .await
}

/// Makes `device_id` the user's dehydrated device (the caller deletes the previous one).
pub async fn set(tx: &mut Tx, user_id: &str, device_id: &str, device_data: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO dehydrated_devices (user_id, device_id, device_data) VALUES ($1, $2, $3)
         ON CONFLICT (user_id) DO UPDATE SET device_id = excluded.device_id, device_data = excluded.device_data",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(device_data)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Forgets that a device is dehydrated (it is being deleted).
pub(super) async fn forget(tx: &mut Tx, user_id: &str, device_id: &str) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM dehydrated_devices WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
