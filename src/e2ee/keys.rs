//! Device keys, one-time and fallback keys: upload, query, claim.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value, json};

use super::{is_local, remote, signed_part, stored_object, verify_signature};
use crate::accounts::Identity;
use crate::cluster::{Message, Publisher};
use crate::error::{Error, Result};
use crate::storage::e2ee_keys::{self, KeyRow};
use crate::storage::{Db, Tx, cross_signing, device_lists};
use crate::{AppState, Services};

/// The one-time key algorithm clients rely on seeing a count for, even when it is zero.
const SIGNED_CURVE25519: &str = "signed_curve25519";

/// The body of `/keys/upload`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct Upload {
    #[serde(default)]
    pub device_keys: Option<Map<String, Value>>,
    #[serde(default)]
    pub one_time_keys: BTreeMap<String, Value>,
    #[serde(default)]
    pub fallback_keys: BTreeMap<String, Value>,
}

/// `one_time_key_counts` of `/keys/upload` and `device_one_time_keys_count` of `/sync`:
/// unclaimed one-time keys per algorithm, always with `signed_curve25519`.
pub async fn one_time_key_counts(db: &Db, user_id: &str, device_id: &str) -> Result<BTreeMap<String, i64>> {
    let mut counts = e2ee_keys::device_one_time_keys_count(db, user_id, device_id).await?;
    counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
    Ok(counts)
}

/// A device's one-time key counts (as [`one_time_key_counts`]) and unused fallback key types.
pub type KeyStatus = Arc<(BTreeMap<String, i64>, Vec<String>)>;

/// `device_one_time_keys_count` and `device_unused_fallback_key_types` of `/sync`, which every
/// sync answers: read together, and kept in memory until the device's keys change.
pub async fn device_key_status(svc: &Services, user_id: &UserId, device_id: &str) -> Result<KeyStatus> {
    let cache = &svc.key_status;
    if let Some(status) = cache.get(user_id, device_id) {
        return Ok(status);
    }
    let epoch = cache.epoch();
    let (mut counts, fallback) = e2ee_keys::device_key_status(&svc.db, user_id.as_str(), device_id).await?;
    counts.entry(SIGNED_CURVE25519.to_owned()).or_insert(0);
    let status = Arc::new((counts, fallback));
    cache.remember(user_id, device_id, status.clone(), epoch);
    Ok(status)
}

/// Users whose devices' key status is kept before the cache starts again.
const KEY_STATUS_LIMIT: usize = 100_000;

/// The key status of devices (`device_key_status`). Whatever changes a device's one-time or
/// fallback keys (an upload, a claim) or makes a device ID new (a login that may reuse a
/// deleted device's ID) calls `forget_user` once committed. `epoch` counts those calls: a
/// status read from the database is kept only when none happened meanwhile.
pub struct KeyStatusCache {
    /// User -> device -> key status.
    users: Mutex<HashMap<OwnedUserId, HashMap<String, KeyStatus>>>,
    epoch: AtomicU64,
    others: Publisher,
}

impl KeyStatusCache {
    pub fn new(others: Publisher) -> Self {
        KeyStatusCache { users: Mutex::default(), epoch: AtomicU64::new(0), others }
    }

    fn get(&self, user_id: &UserId, device_id: &str) -> Option<KeyStatus> {
        self.lock().get(user_id)?.get(device_id).cloned()
    }

    fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    fn remember(&self, user_id: &UserId, device_id: &str, status: KeyStatus, epoch: u64) {
        let mut users = self.lock();
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if users.len() >= KEY_STATUS_LIMIT {
            users.clear();
        }
        users.entry(user_id.to_owned()).or_default().insert(device_id.to_owned(), status);
    }

    /// Forgets the key status of a user's devices, here and in the other processes.
    pub fn forget_user(&self, user_id: &UserId) {
        self.forget_user_here(user_id);
        self.others.send(Message::KeysChanged { user: user_id.to_owned() });
    }

    /// Forgets every device's key status in this process (announcements may have been missed).
    pub fn forget_all(&self) {
        let mut users = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        users.clear();
    }

    /// Forgets the key status of a user's devices in this process only.
    pub fn forget_user_here(&self, user_id: &UserId) {
        let mut users = self.lock();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        users.remove(user_id);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUserId, HashMap<String, KeyStatus>>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stores the keys of the caller's device; answers the one-time key counts.
pub async fn upload(state: &AppState, me: &Identity, body: Upload) -> Result<BTreeMap<String, i64>> {
    let user_id = me.user_id.as_str();
    let device_id = me.device_id.as_str();
    let device_keys = body.device_keys.map(|keys| check_device_keys(me, keys)).transpose()?;
    let one_time_keys = parse_keys(&body.one_time_keys, "one_time_keys")?;
    let fallback_keys = parse_keys(&body.fallback_keys, "fallback_keys")?;
    let mut algorithms = BTreeSet::new();
    if let Some((algorithm, _)) = fallback_keys.iter().find(|(algorithm, _)| !algorithms.insert(algorithm)) {
        return Err(Error::invalid_param(format!("More than one fallback key for {algorithm}")));
    }

    let mut tx = state.db.begin().await?;
    let changed = match &device_keys {
        Some(keys) => store_device_keys(&mut tx, user_id, device_id, keys).await?,
        None => false,
    };
    for (algorithm, key) in &one_time_keys {
        match e2ee_keys::one_time_key(&mut tx, user_id, device_id, algorithm, &key.key_id).await? {
            None => e2ee_keys::add_one_time_key(&mut tx, user_id, device_id, algorithm, key).await?,
            // A retried upload (the client may not have kept the signatures) is fine.
            Some(existing) if same_key(&existing, &key.key_json)? => {}
            Some(_) => {
                return Err(Error::invalid_param(format!(
                    "One-time key {algorithm}:{} already exists with another value",
                    key.key_id
                )));
            }
        }
    }
    for (algorithm, key) in &fallback_keys {
        // Uploading the current fallback key again must not make a used key look unused.
        let current = e2ee_keys::fallback_key(&mut tx, user_id, device_id, algorithm).await?;
        if current.as_ref() != Some(key) {
            e2ee_keys::set_fallback_key(&mut tx, user_id, device_id, algorithm, key).await?;
        }
    }
    if changed {
        device_lists::record_change(&mut tx, user_id).await?;
    }
    tx.commit().await?;
    state.key_status.forget_user(&me.user_id);
    if changed {
        state.notifier.notify([me.user_id.as_ref()]);
        super::device_lists::devices_changed(state, &me.user_id, std::slice::from_ref(&me.device_id)).await?;
    }
    one_time_key_counts(&state.db, user_id, device_id).await
}

/// Checks uploaded device keys: they name the caller's user and device, hold the device's
/// ed25519 key, and are signed by it. Returns them without `unsigned`.
fn check_device_keys(me: &Identity, mut keys: Map<String, Value>) -> Result<Map<String, Value>> {
    if keys.get("user_id").and_then(Value::as_str) != Some(me.user_id.as_str()) {
        return Err(Error::invalid_param("device_keys.user_id does not match the authenticated user"));
    }
    if keys.get("device_id").and_then(Value::as_str) != Some(me.device_id.as_str()) {
        return Err(Error::invalid_param("device_keys.device_id does not match the authenticated device"));
    }
    if !keys.get("algorithms").is_some_and(|a| a.as_array().is_some_and(|a| a.iter().all(Value::is_string))) {
        return Err(Error::bad_json("device_keys.algorithms must be a list of strings"));
    }
    let key_id = format!("ed25519:{}", me.device_id);
    let ed25519 = keys
        .get("keys")
        .and_then(|k| k.get(&key_id))
        .and_then(Value::as_str)
        .ok_or_else(|| Error::bad_json(format!("device_keys.keys has no {key_id} key")))?
        .to_owned();
    keys.remove("unsigned");
    verify_signature(&keys, me.user_id.as_str(), &key_id, &ed25519)?;
    Ok(keys)
}

/// Stores a device's identity keys; `true` when they differ from what was stored. The keys
/// themselves may not change once uploaded (their signatures may).
async fn store_device_keys(tx: &mut Tx, user_id: &str, device_id: &str, keys: &Map<String, Value>) -> Result<bool> {
    if let Some(existing) = e2ee_keys::device_keys(&mut **tx, user_id, device_id).await? {
        let existing = stored_object(&existing)?;
        if existing == *keys {
            return Ok(false);
        }
        if existing.get("keys") != keys.get("keys") {
            return Err(Error::invalid_param("The identity keys of a device cannot be changed once uploaded"));
        }
    }
    e2ee_keys::set_device_keys(tx, user_id, device_id, &Value::Object(keys.clone()).to_string()).await?;
    Ok(true)
}

/// Splits `{"<algorithm>:<key_id>": key}` into (algorithm, key) pairs.
fn parse_keys(keys: &BTreeMap<String, Value>, field: &str) -> Result<Vec<(String, KeyRow)>> {
    keys.iter()
        .map(|(full_id, key)| {
            let (algorithm, key_id) = full_id
                .split_once(':')
                .filter(|(a, k)| !a.is_empty() && !k.is_empty())
                .ok_or_else(|| Error::bad_json(format!("{field}: key ID {full_id:?} is not <algorithm>:<key_id>")))?;
            if !key.is_object() && !key.is_string() {
                return Err(Error::bad_json(format!("{field}: key {full_id:?} must be an object or a string")));
            }
            Ok((algorithm.to_owned(), KeyRow { key_id: key_id.to_owned(), key_json: key.to_string() }))
        })
        .collect()
}

/// Whether two one-time keys are the same, signatures aside.
fn same_key(stored: &str, uploaded: &str) -> Result<bool> {
    let parse = |json: &str| serde_json::from_str::<Value>(json).map_err(|e| Error::Internal(e.into()));
    Ok(match (parse(stored)?, parse(uploaded)?) {
        (Value::Object(a), Value::Object(b)) => signed_part(&a) == signed_part(&b),
        (a, b) => a == b,
    })
}

/// The answer of `/keys/query` for `requester`: local users from the database, remote ones
/// from their servers within `timeout` (servers that fail are listed in `failures`).
pub async fn query(
    state: &AppState,
    requester: &UserId,
    users: BTreeMap<OwnedUserId, Vec<String>>,
    timeout: Duration,
) -> Result<Map<String, Value>> {
    let (local, others): (BTreeMap<_, _>, BTreeMap<_, _>) =
        users.into_iter().partition(|(user, _)| is_local(user, &state.config.server_name));
    let mut answer = query_local(state, requester, &local).await?;
    let fetched = remote::query(state, others, timeout).await;
    for (field, remote) in [
        ("device_keys", fetched.device_keys),
        ("master_keys", fetched.master_keys),
        ("self_signing_keys", fetched.self_signing_keys),
    ] {
        if let Some(Value::Object(merged)) = answer.get_mut(field) {
            merged.extend(remote);
        }
    }
    answer.insert("failures".into(), Value::Object(fetched.failures));
    Ok(answer)
}

/// The keys of local users as `requester` sees them (`device_keys`, `master_keys`,
/// `self_signing_keys`, `user_signing_keys`).
pub async fn query_local(
    state: &AppState,
    requester: &UserId,
    users: &BTreeMap<OwnedUserId, Vec<String>>,
) -> Result<Map<String, Value>> {
    let mut device_keys = Map::new();
    let mut master_keys = Map::new();
    let mut self_signing_keys = Map::new();
    let mut user_signing_keys = Map::new();
    for (user_id, wanted_devices) in users {
        let signatures = cross_signing::signatures_visible_to(&state.db, user_id.as_str(), requester.as_str()).await?;
        let with_signatures = |target_key_id: &str, json: &str| -> Result<Map<String, Value>> {
            let mut object = stored_object(json)?;
            for s in signatures.iter().filter(|s| s.target_key_id == target_key_id) {
                let all = object.entry("signatures").or_insert_with(|| json!({}));
                if let Some(all) = all.as_object_mut() {
                    let by_signer = all.entry(s.signer_user_id.clone()).or_insert_with(|| json!({}));
                    if let Some(by_signer) = by_signer.as_object_mut() {
                        by_signer.insert(s.signer_key_id.clone(), json!(s.signature));
                    }
                }
            }
            Ok(object)
        };

        let mut devices = Map::new();
        for row in e2ee_keys::user_device_keys(&state.db, user_id.as_str()).await? {
            if !wanted_devices.is_empty() && !wanted_devices.contains(&row.device_id) {
                continue;
            }
            let mut keys = with_signatures(&row.device_id, &row.key_json)?;
            let unsigned = match &row.display_name {
                Some(name) => json!({ "device_display_name": name }),
                None => json!({}),
            };
            keys.insert("unsigned".into(), unsigned);
            devices.insert(row.device_id, Value::Object(keys));
        }
        device_keys.insert(user_id.to_string(), Value::Object(devices));

        for key in cross_signing::keys(state.db.read(), user_id.as_str()).await? {
            let target = match key.key_type.as_str() {
                "master" => &mut master_keys,
                "self_signing" => &mut self_signing_keys,
                // The user-signing key is private to its owner.
                "user_signing" if user_id == requester => &mut user_signing_keys,
                _ => continue,
            };
            target.insert(user_id.to_string(), Value::Object(with_signatures(&key.public_key, &key.key_json)?));
        }
    }
    let mut answer = Map::new();
    answer.insert("device_keys".into(), Value::Object(device_keys));
    answer.insert("master_keys".into(), Value::Object(master_keys));
    answer.insert("self_signing_keys".into(), Value::Object(self_signing_keys));
    answer.insert("user_signing_keys".into(), Value::Object(user_signing_keys));
    Ok(answer)
}

/// The answer of `/keys/claim`: local users' keys claimed here, remote ones from their
/// servers within `timeout` (servers that fail are listed in `failures`).
pub async fn claim(
    state: &AppState,
    wanted: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    timeout: Duration,
) -> Result<Map<String, Value>> {
    let (local, others): (BTreeMap<_, _>, BTreeMap<_, _>) =
        wanted.into_iter().partition(|(user, _)| is_local(user, &state.config.server_name));
    let mut one_time_keys = claim_local(state, &local).await?;
    let (remote_keys, failures) = remote::claim(state, others, timeout).await;
    one_time_keys.extend(remote_keys);
    let mut answer = Map::new();
    answer.insert("one_time_keys".into(), Value::Object(one_time_keys));
    answer.insert("failures".into(), Value::Object(failures));
    Ok(answer)
}

/// Claims local users' keys: for each device, its oldest one-time key of the algorithm
/// (taken away), or else its fallback key (then marked used). Answers `one_time_keys`.
pub async fn claim_local(
    state: &AppState,
    wanted: &BTreeMap<OwnedUserId, BTreeMap<String, String>>,
) -> Result<Map<String, Value>> {
    let mut one_time_keys = Map::new();
    let mut tx = state.db.begin().await?;
    for (user_id, devices) in wanted {
        let mut claimed = Map::new();
        for (device_id, algorithm) in devices {
            let key = match e2ee_keys::claim_one_time_key(&mut tx, user_id.as_str(), device_id, algorithm).await? {
                Some(key) => Some(key),
                None => e2ee_keys::claim_fallback_key(&mut tx, user_id.as_str(), device_id, algorithm).await?,
            };
            if let Some(key) = key {
                let json: Value = serde_json::from_str(&key.key_json).map_err(|e| Error::Internal(e.into()))?;
                claimed.insert(device_id.clone(), json!({ format!("{algorithm}:{}", key.key_id): json }));
            }
        }
        if !claimed.is_empty() {
            one_time_keys.insert(user_id.to_string(), Value::Object(claimed));
        }
    }
    tx.commit().await?;
    for user_id in wanted.keys() {
        state.key_status.forget_user(user_id);
    }
    Ok(one_time_keys)
}
