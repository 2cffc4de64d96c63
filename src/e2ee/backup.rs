//! Server-side key backups: versions, and the encrypted room keys stored in them.

use std::collections::BTreeMap;

use axum::http::StatusCode;
use serde_json::{Map, Value, json};

use crate::AppState;
use crate::error::{Error, Result};
use crate::storage::key_backup::{self, BackedUpKey, BackupVersion};
use crate::storage::{Db, Tx};

/// The backed-up key of one session, as clients send and receive it.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
pub struct KeyBackupData {
    pub first_message_index: u64,
    pub forwarded_count: u64,
    pub is_verified: bool,
    pub session_data: Map<String, Value>,
}

/// The keys of one room, as clients send and receive them.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
pub struct RoomKeyBackup {
    pub sessions: BTreeMap<String, KeyBackupData>,
}

/// Which keys of a backup a request is about.
#[derive(Debug, Clone, Copy)]
pub struct Selection<'a> {
    pub room_id: Option<&'a str>,
    pub session_id: Option<&'a str>,
}

/// A version as clients name it: an opaque string, a number here. Anything else names no
/// version.
fn parse_version(version: &str) -> Result<i64> {
    version.parse().map_err(|_| unknown_version())
}

fn unknown_version() -> Error {
    Error::not_found("Unknown backup version")
}

/// The description of a version: algorithm, auth_data, count, etag, version.
async fn describe(db: &Db, user_id: &str, v: &BackupVersion) -> Result<Value> {
    let auth_data: Value = serde_json::from_str(&v.auth_data).map_err(|e| Error::Internal(e.into()))?;
    let count = key_backup::count_keys(db.read(), user_id, v.version).await?;
    Ok(json!({
        "algorithm": v.algorithm,
        "auth_data": auth_data,
        "count": count,
        "etag": v.etag.to_string(),
        "version": v.version.to_string(),
    }))
}

/// Creates a new backup version, which becomes the current one.
pub async fn create_version(
    state: &AppState,
    user_id: &str,
    algorithm: &str,
    auth_data: &Map<String, Value>,
) -> Result<String> {
    let mut tx = state.db.begin().await?;
    let version =
        key_backup::create_version(&mut tx, user_id, algorithm, &Value::Object(auth_data.clone()).to_string()).await?;
    tx.commit().await?;
    Ok(version.to_string())
}

/// The description of a version, or of the current one when `version` is `None`.
pub async fn get_version(state: &AppState, user_id: &str, version: Option<&str>) -> Result<Value> {
    let found = match version {
        Some(v) => key_backup::version(state.db.read(), user_id, parse_version(v)?).await?,
        None => key_backup::current_version(state.db.read(), user_id).await?,
    };
    let Some(v) = found else {
        return Err(match version {
            Some(_) => unknown_version(),
            None => Error::not_found("No current backup version"),
        });
    };
    describe(&state.db, user_id, &v).await
}

/// Replaces the `auth_data` of a version; the algorithm cannot change.
pub async fn update_version(
    state: &AppState,
    user_id: &str,
    version: &str,
    algorithm: &str,
    auth_data: &Map<String, Value>,
) -> Result<()> {
    let number = parse_version(version)?;
    let mut tx = state.db.begin().await?;
    let current = key_backup::version(&mut *tx, user_id, number).await?.ok_or_else(unknown_version)?;
    if current.algorithm != algorithm {
        return Err(Error::invalid_param("Algorithm does not match"));
    }
    key_backup::set_auth_data(&mut tx, user_id, number, &Value::Object(auth_data.clone()).to_string()).await?;
    tx.commit().await?;
    Ok(())
}

/// Deletes a version and its keys; deleting it again succeeds.
pub async fn delete_version(state: &AppState, user_id: &str, version: &str) -> Result<()> {
    let number = parse_version(version)?;
    let mut tx = state.db.begin().await?;
    let existed = key_backup::delete_version(&mut tx, user_id, number).await?;
    if !existed {
        return Err(unknown_version());
    }
    tx.commit().await?;
    Ok(())
}

/// The version keys are written to: it must be the current one (403
/// `M_WRONG_ROOM_KEYS_VERSION` naming the current one otherwise, 404 if it does not exist).
async fn writable_version(tx: &mut Tx, user_id: &str, version: &str) -> Result<i64> {
    let number = parse_version(version)?;
    let current = key_backup::current_version(&mut **tx, user_id).await?.ok_or_else(unknown_version)?;
    if current.version == number {
        return Ok(number);
    }
    if key_backup::version(&mut **tx, user_id, number).await?.is_none() {
        return Err(unknown_version());
    }
    Err(Error::matrix(StatusCode::FORBIDDEN, "M_WRONG_ROOM_KEYS_VERSION", "Wrong backup version")
        .with_field("current_version", json!(current.version.to_string())))
}

/// `{etag, count}` of a version after a change.
async fn update_answer(tx: &mut Tx, user_id: &str, version: i64, changed: bool) -> Result<Value> {
    let etag = if changed {
        key_backup::bump_etag(tx, user_id, version).await?
    } else {
        key_backup::version(&mut **tx, user_id, version).await?.ok_or_else(unknown_version)?.etag
    };
    let count = key_backup::count_keys(&mut **tx, user_id, version).await?;
    Ok(json!({ "etag": etag.to_string(), "count": count }))
}

/// Whether a new key for a session should replace the stored one: the spec's order is
/// verified first, then the lower first message index, then the lower forwarded count.
fn is_better(new: &BackedUpKey, old: &BackedUpKey) -> bool {
    (!new.is_verified, new.first_message_index, new.forwarded_count)
        < (!old.is_verified, old.first_message_index, old.forwarded_count)
}

/// Stores keys in the current version, keeping the better key of each session.
pub async fn put_keys(
    state: &AppState,
    user_id: &str,
    version: &str,
    rooms: &BTreeMap<String, RoomKeyBackup>,
) -> Result<Value> {
    let mut tx = state.db.begin().await?;
    let number = writable_version(&mut tx, user_id, version).await?;
    let mut changed = false;
    for (room_id, room) in rooms {
        for (session_id, data) in &room.sessions {
            let new = BackedUpKey {
                first_message_index: to_i64(data.first_message_index)?,
                forwarded_count: to_i64(data.forwarded_count)?,
                is_verified: data.is_verified,
                session_data: Value::Object(data.session_data.clone()).to_string(),
            };
            let keep_old = match key_backup::key(&mut tx, user_id, number, room_id, session_id).await? {
                Some(old) => !is_better(&new, &old),
                None => false,
            };
            if !keep_old {
                key_backup::put_key(&mut tx, user_id, number, room_id, session_id, &new).await?;
                changed = true;
            }
        }
    }
    let answer = update_answer(&mut tx, user_id, number, changed).await?;
    tx.commit().await?;
    Ok(answer)
}

fn to_i64(n: u64) -> Result<i64> {
    i64::try_from(n).map_err(|_| Error::bad_json("Number out of range"))
}

/// The keys of a version (any existing version), grouped by room and session.
pub async fn get_keys(
    state: &AppState,
    user_id: &str,
    version: &str,
    selection: Selection<'_>,
) -> Result<BTreeMap<String, RoomKeyBackup>> {
    let number = parse_version(version)?;
    key_backup::version(state.db.read(), user_id, number).await?.ok_or_else(unknown_version)?;
    let mut rooms: BTreeMap<String, RoomKeyBackup> = BTreeMap::new();
    for s in key_backup::keys(&state.db, user_id, number, selection.room_id, selection.session_id).await? {
        let session_data = serde_json::from_str(&s.key.session_data).map_err(|e| Error::Internal(e.into()))?;
        let data = KeyBackupData {
            first_message_index: u64::try_from(s.key.first_message_index).unwrap_or_default(),
            forwarded_count: u64::try_from(s.key.forwarded_count).unwrap_or_default(),
            is_verified: s.key.is_verified,
            session_data,
        };
        rooms.entry(s.room_id).or_default().sessions.insert(s.session_id, data);
    }
    Ok(rooms)
}

/// Deletes keys from a version (any existing version).
pub async fn delete_keys(state: &AppState, user_id: &str, version: &str, selection: Selection<'_>) -> Result<Value> {
    let number = parse_version(version)?;
    let mut tx = state.db.begin().await?;
    key_backup::version(&mut *tx, user_id, number).await?.ok_or_else(unknown_version)?;
    let deleted = key_backup::delete_keys(&mut tx, user_id, number, selection.room_id, selection.session_id).await?;
    let answer = update_answer(&mut tx, user_id, number, deleted > 0).await?;
    tx.commit().await?;
    Ok(answer)
}
