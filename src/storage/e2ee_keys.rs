//! Device identity keys, one-time keys and fallback keys (`/keys/upload`, `/keys/query`,
//! `/keys/claim`, and the key counts of `/sync`).

use std::collections::BTreeMap;

use sqlx::{AnyExecutor, Row};

use super::{Db, Tx, device_lists, to_device};

/// The uploaded identity keys of one device, with the device's display name.
#[derive(Debug, Clone)]
pub struct DeviceKeysRow {
    pub device_id: String,
    pub key_json: String,
    pub display_name: Option<String>,
}

/// A one-time or fallback key: its ID (after `<algorithm>:`) and its JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRow {
    pub key_id: String,
    pub key_json: String,
}

/// The stored identity keys of one device.
pub async fn device_keys<'e>(ex: impl AnyExecutor<'e>, user_id: &str, device_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT key_json FROM e2e_device_keys WHERE user_id = $1 AND device_id = $2")
        .bind(user_id)
        .bind(device_id)
        .fetch_optional(ex)
        .await
}

/// The identity keys of every device of a user that uploaded some, by device ID.
pub async fn user_device_keys(db: &Db, user_id: &str) -> sqlx::Result<Vec<DeviceKeysRow>> {
    let rows = sqlx::query(
        "SELECT k.device_id, k.key_json, d.display_name FROM e2e_device_keys k
         LEFT JOIN devices d ON d.user_id = k.user_id AND d.device_id = k.device_id
         WHERE k.user_id = $1 ORDER BY k.device_id",
    )
    .bind(user_id)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(DeviceKeysRow {
                device_id: r.try_get("device_id")?,
                key_json: r.try_get("key_json")?,
                display_name: r.try_get("display_name")?,
            })
        })
        .collect()
}

/// Stores (or replaces) the identity keys of a device.
pub async fn set_device_keys(tx: &mut Tx, user_id: &str, device_id: &str, key_json: &str) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO e2e_device_keys (user_id, device_id, key_json) VALUES ($1, $2, $3)
         ON CONFLICT (user_id, device_id) DO UPDATE SET key_json = EXCLUDED.key_json",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(key_json)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The one-time key of a device with this algorithm and key ID, if it is still unclaimed.
pub async fn one_time_key(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key_id: &str,
) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar(
        "SELECT key_json FROM e2e_one_time_keys
         WHERE user_id = $1 AND device_id = $2 AND algorithm = $3 AND key_id = $4",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .bind(key_id)
    .fetch_optional(&mut **tx)
    .await
}

pub async fn add_one_time_key(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key: &KeyRow,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO e2e_one_time_keys (user_id, device_id, algorithm, key_id, key_json) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .bind(&key.key_id)
    .bind(&key.key_json)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes and returns the oldest unclaimed one-time key of a device for an algorithm.
pub async fn claim_one_time_key(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> sqlx::Result<Option<KeyRow>> {
    loop {
        let oldest: Option<i64> = sqlx::query_scalar(
            "SELECT id FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
             ORDER BY id LIMIT 1",
        )
        .bind(user_id)
        .bind(device_id)
        .bind(algorithm)
        .fetch_optional(&mut **tx)
        .await?;
        let Some(id) = oldest else { return Ok(None) };
        // A concurrent claim (PostgreSQL) may have taken this key meanwhile: then try the next.
        let taken = sqlx::query("DELETE FROM e2e_one_time_keys WHERE id = $1 RETURNING key_id, key_json")
            .bind(id)
            .fetch_optional(&mut **tx)
            .await?;
        if let Some(r) = taken {
            return Ok(Some(KeyRow { key_id: r.try_get("key_id")?, key_json: r.try_get("key_json")? }));
        }
    }
}

/// `device_one_time_keys_count` of `/sync`: unclaimed one-time keys of a device per algorithm.
pub async fn device_one_time_keys_count(
    db: &Db,
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<BTreeMap<String, i64>> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "SELECT algorithm, COUNT(*) FROM e2e_one_time_keys WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_all(db.read())
    .await?;
    Ok(rows.into_iter().collect())
}

/// The fallback key of a device for an algorithm.
pub async fn fallback_key(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> sqlx::Result<Option<KeyRow>> {
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT key_id, key_json FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND algorithm = $3",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(row.map(|(key_id, key_json)| KeyRow { key_id, key_json }))
}

/// Stores the fallback key of a device for an algorithm, replacing the previous one, unused.
pub async fn set_fallback_key(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
    key: &KeyRow,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO e2e_fallback_keys (user_id, device_id, algorithm, key_id, key_json, used)
         VALUES ($1, $2, $3, $4, $5, 0)
         ON CONFLICT (user_id, device_id, algorithm)
         DO UPDATE SET key_id = EXCLUDED.key_id, key_json = EXCLUDED.key_json, used = 0",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .bind(&key.key_id)
    .bind(&key.key_json)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Returns the fallback key of a device for an algorithm and marks it used.
pub async fn claim_fallback_key(
    tx: &mut Tx,
    user_id: &str,
    device_id: &str,
    algorithm: &str,
) -> sqlx::Result<Option<KeyRow>> {
    let row = sqlx::query(
        "UPDATE e2e_fallback_keys SET used = 1 WHERE user_id = $1 AND device_id = $2 AND algorithm = $3
         RETURNING key_id, key_json",
    )
    .bind(user_id)
    .bind(device_id)
    .bind(algorithm)
    .fetch_optional(&mut **tx)
    .await?;
    row.map(|r| Ok(KeyRow { key_id: r.try_get("key_id")?, key_json: r.try_get("key_json")? })).transpose()
}

/// `device_unused_fallback_key_types` of `/sync`: algorithms whose fallback key no claim took yet.
pub async fn device_unused_fallback_key_types(db: &Db, user_id: &str, device_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar(
        "SELECT algorithm FROM e2e_fallback_keys WHERE user_id = $1 AND device_id = $2 AND used = 0
         ORDER BY algorithm",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_all(db.read())
    .await
}

/// A device's unclaimed one-time keys per algorithm and its unused fallback key types
/// (sorted), in one statement: every `/sync` answer carries both.
pub async fn device_key_status(
    db: &Db,
    user_id: &str,
    device_id: &str,
) -> sqlx::Result<(BTreeMap<String, i64>, Vec<String>)> {
    let rows: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT algorithm, COUNT(*), CAST(0 AS BIGINT) FROM e2e_one_time_keys
         WHERE user_id = $1 AND device_id = $2 GROUP BY algorithm
         UNION ALL
         SELECT algorithm, CAST(0 AS BIGINT), CAST(1 AS BIGINT) FROM e2e_fallback_keys
         WHERE user_id = $1 AND device_id = $2 AND used = 0",
    )
    .bind(user_id)
    .bind(device_id)
    .fetch_all(db.read())
    .await?;
    let (mut counts, mut fallback) = (BTreeMap::new(), Vec::new());
    for (algorithm, count, is_fallback) in rows {
        match is_fallback {
            0 => {
                counts.insert(algorithm, count);
            }
            _ => fallback.push(algorithm),
        }
    }
    fallback.sort_unstable();
    Ok((counts, fallback))
}

/// The devices of one user a deletion covers.
#[derive(Debug, Clone, Copy)]
pub enum DeviceSet<'a> {
    One(&'a str),
    AllExcept(&'a str),
}

impl DeviceSet<'_> {
    /// The SQL condition on a device ID column, with the device ID bound as `$2`.
    pub(super) fn condition(&self, column: &str) -> String {
        match self {
            DeviceSet::One(_) => format!("{column} = $2"),
            DeviceSet::AllExcept(_) => format!("{column} <> $2"),
        }
    }

    /// The device ID to bind as `$2`.
    pub(super) fn device_id(&self) -> &str {
        match self {
            DeviceSet::One(d) | DeviceSet::AllExcept(d) => d,
        }
    }
}

/// Forgets everything end-to-end encryption holds for deleted devices: their keys, the
/// signatures on them, their to-device inbox. Records a device-list change when a device
/// that had identity keys goes.
pub async fn delete_devices(tx: &mut Tx, user_id: &str, devices: DeviceSet<'_>) -> sqlx::Result<()> {
    let with_keys =
        format!("SELECT device_id FROM e2e_device_keys WHERE user_id = $1 AND {}", devices.condition("device_id"));
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM e2e_signatures WHERE target_user_id = $1 AND target_key_id IN ({with_keys})"
    )))
    .bind(user_id)
    .bind(devices.device_id())
    .execute(&mut **tx)
    .await?;
    let deleted_keys = sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM e2e_device_keys WHERE user_id = $1 AND {}",
        devices.condition("device_id")
    )))
    .bind(user_id)
    .bind(devices.device_id())
    .execute(&mut **tx)
    .await?;
    for table in ["e2e_one_time_keys", "e2e_fallback_keys"] {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "DELETE FROM {table} WHERE user_id = $1 AND {}",
            devices.condition("device_id")
        )))
        .bind(user_id)
        .bind(devices.device_id())
        .execute(&mut **tx)
        .await?;
    }
    to_device::delete_devices(tx, user_id, devices).await?;
    if deleted_keys.rows_affected() > 0 {
        device_lists::record_change(tx, user_id).await?;
    }
    Ok(())
}
