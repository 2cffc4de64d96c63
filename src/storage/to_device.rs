//! To-device messages: the inbox of each device, and the transaction IDs already handled.

use sqlx::Row;

use super::e2ee_keys::DeviceSet;
use super::{Db, Tx};

/// A message waiting in a device's inbox.
#[derive(Debug, Clone)]
pub struct ToDeviceMessage {
    pub stream_pos: i64,
    pub sender: String,
    pub event_type: String,
    /// The event content, JSON.
    pub content: String,
}

/// Records a transaction ID of a sending device; `false` when it was already handled.
pub async fn add_txn(tx: &mut Tx, user_id: &str, device_id: &str, txn_id: &str) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "INSERT INTO to_device_txns (user_id, device_id, txn_id) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, device_id, txn_id) DO NOTHING",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(txn_id)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

/// Puts a message in the inbox of a user's device, or of all their devices when `device_id`
/// is `None`. Only existing devices get it; returns how many did.
pub async fn deliver(
    tx: &mut Tx,
    user_id: &str,
    device_id: Option<&str>,
    stream_pos: i64,
    sender: &str,
    event_type: &str,
    content: &str,
) -> sqlx::Result<u64> {
    let res = sqlx::query(
        "INSERT INTO to_device_inbox (user_id, device_id, stream_pos, sender, event_type, content)
         SELECT user_id, device_id, $3, $4, $5, $6 FROM devices
         WHERE user_id = $1 AND ($2 IS NULL OR device_id = $2)",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(stream_pos)
    .bind(sender)
    .bind(event_type)
    .bind(content)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected())
}

/// The messages waiting for a device at stream positions in (`after`, `up_to`], oldest
/// first, at most `limit` of them.
pub async fn pending(
    db: &Db,
    user_id: &str,
    device_id: &str,
    (after, up_to): (i64, i64),
    limit: i64,
) -> sqlx::Result<Vec<ToDeviceMessage>> {
    let rows = sqlx::query(
        "SELECT stream_pos, sender, event_type, content FROM to_device_inbox
         WHERE user_id = $1 AND device_id = $2 AND stream_pos > $3 AND stream_pos <= $4
         ORDER BY stream_pos LIMIT $5",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(after)
    .bind(up_to)
    .bind(limit)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(ToDeviceMessage {
                stream_pos: r.try_get("stream_pos")?,
                sender: r.try_get("sender")?,
                event_type: r.try_get("event_type")?,
                content: r.try_get("content")?,
            })
        })
        .collect()
}

/// Deletes the messages of a device up to stream position `up_to` (acknowledged by a
/// `/sync` whose `since` is at least that far); returns how many went.
/// Whether the device has messages at or before `up_to` (so that the common sync, with
/// nothing to acknowledge, needs no write transaction).
pub async fn any_up_to(db: &Db, user_id: &str, device_id: &str, up_to: i64) -> sqlx::Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3 LIMIT 1",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(up_to)
    .fetch_optional(db.read())
    .await?;
    Ok(found.is_some())
}

pub async fn delete_up_to(tx: &mut Tx, user_id: &str, device_id: &str, up_to: i64) -> sqlx::Result<u64> {
    let res = sqlx::query("DELETE FROM to_device_inbox WHERE user_id = $1 AND device_id = $2 AND stream_pos <= $3")
        .bind(user_id)
        .bind(device_id)
        .bind(up_to)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected())
}

/// Drops the inbox and the transaction IDs of deleted devices.
pub(super) async fn delete_devices(tx: &mut Tx, user_id: &str, devices: DeviceSet<'_>) -> sqlx::Result<()> {
    for table in ["to_device_inbox", "to_device_txns"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE user_id = $1 AND {}",
            devices.condition("device_id")
        )))
        .bind(user_id)
        .bind(devices.device_id())
        .execute(&mut **tx)
        .await?;
    }
    Ok(())
}
