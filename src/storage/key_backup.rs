//! Server-side key backups: versions per user and the room keys stored in each.

use sqlx::{AnyExecutor, Row};

use super::{Db, Tx};

/// A backup version that is not deleted.
#[derive(Debug, Clone)]
pub struct BackupVersion {
    pub version: i64,
    pub algorithm: String,
    /// JSON object.
    pub auth_data: String,
    pub etag: i64,
}

/// The backed-up key of one megolm session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackedUpKey {
    pub first_message_index: i64,
    pub forwarded_count: i64,
    pub is_verified: bool,
    /// JSON object.
    pub session_data: String,
}

/// A backed-up key with the room and session it is for.
#[derive(Debug, Clone)]
pub struct BackedUpSession {
    pub room_id: String,
    pub session_id: String,
    pub key: BackedUpKey,
}

/// Creates a backup version, numbered after every version the user ever had.
pub async fn create_version(tx: &mut Tx, user_id: &str, algorithm: &str, auth_data: &str) -> sqlx::Result<i64> {
    loop {
        // Two concurrent creations (PostgreSQL) can pick the same number: the later one gets
        // no row back and tries the next number.
        let created = sqlx::query_scalar(
            "INSERT INTO backup_versions (user_id, version, algorithm, auth_data)
             SELECT $1, COALESCE(MAX(version), 0) + 1, $2, $3 FROM backup_versions WHERE user_id = $1
             ON CONFLICT (user_id, version) DO NOTHING
             RETURNING version",
        )
        .bind(user_id)
        .bind(algorithm)
        .bind(auth_data)
        .fetch_optional(&mut **tx)
        .await?;
        if let Some(version) = created {
            return Ok(version);
        }
    }
}

fn version_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<BackupVersion> {
    Ok(BackupVersion {
        version: r.try_get("version")?,
        algorithm: r.try_get("algorithm")?,
        auth_data: r.try_get("auth_data")?,
        etag: r.try_get("etag")?,
    })
}

/// A backup version that exists and is not deleted.
pub async fn version<'e>(ex: impl AnyExecutor<'e>, user_id: &str, version: i64) -> sqlx::Result<Option<BackupVersion>> {
    let row = sqlx::query(
        "SELECT version, algorithm, auth_data, etag FROM backup_versions
         WHERE user_id = $1 AND version = $2 AND deleted = 0",
    )
    .bind(user_id)
    .bind(version)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(version_from_row).transpose()
}

/// The current backup version: the latest one not deleted.
pub async fn current_version<'e>(ex: impl AnyExecutor<'e>, user_id: &str) -> sqlx::Result<Option<BackupVersion>> {
    let row = sqlx::query(
        "SELECT version, algorithm, auth_data, etag FROM backup_versions
         WHERE user_id = $1 AND deleted = 0 ORDER BY version DESC LIMIT 1",
    )
    .bind(user_id)
    .fetch_optional(ex)
    .await?;
    row.as_ref().map(version_from_row).transpose()
}

/// Replaces the `auth_data` of a version; `false` when it does not exist or is deleted.
pub async fn set_auth_data(tx: &mut Tx, user_id: &str, version: i64, auth_data: &str) -> sqlx::Result<bool> {
    let res =
        sqlx::query("UPDATE backup_versions SET auth_data = $1 WHERE user_id = $2 AND version = $3 AND deleted = 0")
            .bind(auth_data)
            .bind(user_id)
            .bind(version)
            .execute(&mut **tx)
            .await?;
    Ok(res.rows_affected() == 1)
}

/// Marks a version deleted and drops its keys; `false` when the version never existed.
pub async fn delete_version(tx: &mut Tx, user_id: &str, version: i64) -> sqlx::Result<bool> {
    let res = sqlx::query("UPDATE backup_versions SET deleted = 1 WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    sqlx::query("DELETE FROM backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .execute(&mut **tx)
        .await?;
    Ok(res.rows_affected() == 1)
}

/// Counts a change of a version's keys; returns the new etag.
pub async fn bump_etag(tx: &mut Tx, user_id: &str, version: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE backup_versions SET etag = etag + 1 WHERE user_id = $1 AND version = $2 RETURNING etag")
        .bind(user_id)
        .bind(version)
        .fetch_one(&mut **tx)
        .await
}

/// How many keys a version holds.
pub async fn count_keys<'e>(ex: impl AnyExecutor<'e>, user_id: &str, version: i64) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT COUNT(*) FROM backup_keys WHERE user_id = $1 AND version = $2")
        .bind(user_id)
        .bind(version)
        .fetch_one(ex)
        .await
}

fn key_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<BackedUpKey> {
    Ok(BackedUpKey {
        first_message_index: r.try_get("first_message_index")?,
        forwarded_count: r.try_get("forwarded_count")?,
        is_verified: r.try_get::<i64, _>("is_verified")? != 0,
        session_data: r.try_get("session_data")?,
    })
}

/// The key of one session in a version.
pub async fn key(
    tx: &mut Tx,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
) -> sqlx::Result<Option<BackedUpKey>> {
    let row = sqlx::query(
        "SELECT first_message_index, forwarded_count, is_verified, session_data FROM backup_keys
         WHERE user_id = $1 AND version = $2 AND room_id = $3 AND session_id = $4",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .fetch_optional(&mut **tx)
    .await?;
    row.as_ref().map(key_from_row).transpose()
}

/// Stores (or replaces) the key of one session in a version.
pub async fn put_key(
    tx: &mut Tx,
    user_id: &str,
    version: i64,
    room_id: &str,
    session_id: &str,
    key: &BackedUpKey,
) -> sqlx::Result<()> {
    sqlx::query(
        "INSERT INTO backup_keys
         (user_id, version, room_id, session_id, first_message_index, forwarded_count, is_verified, session_data)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
         ON CONFLICT (user_id, version, room_id, session_id) DO UPDATE SET
         first_message_index = EXCLUDED.first_message_index, forwarded_count = EXCLUDED.forwarded_count,
         is_verified = EXCLUDED.is_verified, session_data = EXCLUDED.session_data",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .bind(key.first_message_index)
    .bind(key.forwarded_count)
    .bind(i64::from(key.is_verified))
    .bind(&key.session_data)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The keys of a version: all of them, those of one room, or that of one session.
pub async fn keys(
    db: &Db,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> sqlx::Result<Vec<BackedUpSession>> {
    let rows = sqlx::query(
        "SELECT room_id, session_id, first_message_index, forwarded_count, is_verified, session_data
         FROM backup_keys WHERE user_id = $1 AND version = $2
         AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4)
         ORDER BY room_id, session_id",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(BackedUpSession {
                room_id: r.try_get("room_id")?,
                session_id: r.try_get("session_id")?,
                key: key_from_row(r)?,
            })
        })
        .collect()
}

/// Deletes keys of a version: all of them, those of one room, or that of one session.
/// Returns how many went.
pub async fn delete_keys(
    tx: &mut Tx,
    user_id: &str,
    version: i64,
    room_id: Option<&str>,
    session_id: Option<&str>,
) -> sqlx::Result<u64> {
    let res = sqlx::query(
        "DELETE FROM backup_keys WHERE user_id = $1 AND version = $2
         AND ($3 IS NULL OR room_id = $3) AND ($4 IS NULL OR session_id = $4)",
    )
    .bind(user_id)
    .bind(version)
    .bind(room_id)
    .bind(session_id)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected())
}
