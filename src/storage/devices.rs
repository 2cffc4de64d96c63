//! Devices and their access and refresh tokens (stored as hashes only).

use sqlx::Row;

use super::{Db, Tx, now_ms};

#[derive(Debug, Clone)]
pub struct DeviceRow {
    pub device_id: String,
    pub display_name: Option<String>,
    pub last_seen_ts: Option<i64>,
    pub last_seen_ip: Option<String>,
}

/// Who an access token belongs to.
#[derive(Debug, Clone)]
pub struct TokenOwner {
    pub user_id: String,
    pub device_id: String,
    pub expires_ts: Option<i64>,
}

/// Creates the device, or keeps an existing one (a login that names its device ID).
pub async fn upsert(tx: &mut Tx, user_id: &str, device_id: &str, display_name: Option<&str>) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO devices (user_id, device_id, display_name, created_ts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, device_id)
         DO UPDATE SET display_name = COALESCE(EXCLUDED.display_name, devices.display_name)",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(display_name)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

fn device_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<DeviceRow> {
    Ok(DeviceRow {
        device_id: r.try_get("device_id")?,
        display_name: r.try_get("display_name")?,
        last_seen_ts: r.try_get("last_seen_ts")?,
        last_seen_ip: r.try_get("last_seen_ip")?,
    })
}

pub async fn list(db: &Db, user_id: &str) -> sqlx::Result<Vec<DeviceRow>> {
    let rows = sqlx::query(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices
         WHERE user_id = $1 ORDER BY device_id",
    )
    .bind(user_id)
    .fetch_all(db.read())
    .await?;
    rows.iter().map(device_from_row).collect()
}

pub async fn get(db: &Db, user_id: &str, device_id: &str) -> sqlx::Result<Option<DeviceRow>> {
    let row = sqlx::query(
        "SELECT device_id, display_name, last_seen_ts, last_seen_ip FROM devices
         WHERE user_id = $1 AND device_id = $2",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_optional(db.read())
    .await?;
    row.as_ref().map(device_from_row).transpose()
}

/// Renames a device; `Ok(false)` when it does not exist.
pub async fn rename(tx: &mut Tx, user_id: &str, device_id: &str, name: Option<&str>) -> sqlx::Result<bool> {
    let res = sqlx::query("UPDATE devices SET display_name = $1 WHERE user_id = $2 AND device_id = $3")
        .bind(name)
        .bind(user_id)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn touch(db: &Db, user_id: &str, device_id: &str, ip: Option<&str>) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("UPDATE devices SET last_seen_ts = $1, last_seen_ip = $2 WHERE user_id = $3 AND device_id = $4")
        .bind(now_ms())
        .bind(ip)
        .bind(user_id)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Deletes a device with all its tokens, keys, to-device messages and pushers.
pub async fn delete(tx: &mut Tx, user_id: &str, device_id: &str) -> sqlx::Result<bool> {
    delete_tokens(tx, user_id, device_id).await?;
    super::push::delete_device_pushers(tx, user_id, device_id).await?;
    super::e2ee_keys::delete_devices(tx, user_id, super::e2ee_keys::DeviceSet::One(device_id)).await?;
    super::dehydrated_devices::forget(tx, user_id, device_id).await?;
    let res = sqlx::query("DELETE FROM devices WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Deletes the access and refresh tokens of one device (a logout).
pub async fn delete_tokens(tx: &mut Tx, user_id: &str, device_id: &str) -> sqlx::Result<()> {
    for table in ["access_tokens", "refresh_tokens"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1 AND device_id = $2")))
            .bind(user_id)
            .bind(device_id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

pub async fn add_access_token(
    tx: &mut Tx,
    token_hash: &str,
    user_id: &str,
    device_id: &str,
    expires_ts: Option<i64>,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO access_tokens (token_hash, user_id, device_id, expires_ts, created_ts)
         VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(token_hash)
    .bind(user_id)
    .bind(device_id)
    .bind(expires_ts)
    .bind(now_ms())
    .execute(&mut **tx)
    .await?;
    Ok(())
}

pub async fn add_refresh_token(tx: &mut Tx, token_hash: &str, user_id: &str, device_id: &str) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO refresh_tokens (token_hash, user_id, device_id, created_ts) VALUES ($1, $2, $3, $4)")
        .bind(token_hash)
        .bind(user_id)
        .bind(device_id)
        .bind(now_ms())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn access_token_owner(db: &Db, token_hash: &str) -> sqlx::Result<Option<TokenOwner>> {
    let row = sqlx::query("SELECT user_id, device_id, expires_ts FROM access_tokens WHERE token_hash = $1")
        .bind(token_hash)
        .fetch_optional(db.read())
        .await?;
    row.map(|r| {
        Ok(TokenOwner {
            user_id: r.try_get("user_id")?,
            device_id: r.try_get("device_id")?,
            expires_ts: r.try_get("expires_ts")?,
        })
    })
    .transpose()
}

/// Removes a refresh token and returns whose it was.
pub async fn take_refresh_token(tx: &mut Tx, token_hash: &str) -> sqlx::Result<Option<(String, String)>> {
    let row = sqlx::query("DELETE FROM refresh_tokens WHERE token_hash = $1 RETURNING user_id, device_id")
        .bind(token_hash)
        .fetch_optional(&mut **tx)
        .await?;
    row.map(|r| Ok((r.try_get("user_id")?, r.try_get("device_id")?))).transpose()
}

/// Deletes every device (with its tokens, keys, to-device messages and pushers) of a user,
/// except the device named in `keep`.
pub async fn delete_all(tx: &mut Tx, user_id: &str, keep: Option<&str>) -> sqlx::Result<()> {
    let keep = keep.unwrap_or("");
    super::push::delete_pushers_except_device(tx, user_id, keep).await?;
    super::e2ee_keys::delete_devices(tx, user_id, super::e2ee_keys::DeviceSet::AllExcept(keep)).await?;
    for table in ["access_tokens", "refresh_tokens", "devices"] {
        sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE user_id = $1 AND device_id <> $2")))
            .bind(user_id)
            .bind(keep)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
