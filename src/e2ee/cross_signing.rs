//! Cross-signing: a user's master, self-signing and user-signing keys, and the signatures
//! they (and devices) make on devices and master keys.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use ruma::OwnedUserId;
use serde_json::{Map, Value};

use super::{failure, is_local, signed_part, stored_object, verify_signature};
use crate::AppState;
use crate::accounts::Identity;
use crate::error::{Error, Result};
use crate::storage::cross_signing::{self, CrossSigningKeyRow, SignatureRow};
use crate::storage::{self, device_lists, e2ee_keys};

const MASTER: &str = "master";
const SELF_SIGNING: &str = "self_signing";
const USER_SIGNING: &str = "user_signing";

/// The body of `/keys/device_signing/upload` (its `auth` is the handler's business).
#[derive(Debug, Default, serde::Deserialize)]
pub struct SigningKeys {
    #[serde(default)]
    pub master_key: Option<Map<String, Value>>,
    #[serde(default)]
    pub self_signing_key: Option<Map<String, Value>>,
    #[serde(default)]
    pub user_signing_key: Option<Map<String, Value>>,
}

impl SigningKeys {
    /// The keys present, with their type.
    fn present(&self) -> impl Iterator<Item = (&'static str, &Map<String, Value>)> {
        [(MASTER, &self.master_key), (SELF_SIGNING, &self.self_signing_key), (USER_SIGNING, &self.user_signing_key)]
            .into_iter()
            .filter_map(|(usage, key)| key.as_ref().map(|k| (usage, k)))
    }
}

/// The stored cross-signing key of a type.
fn stored<'a>(keys: &'a [CrossSigningKeyRow], key_type: &str) -> Option<&'a CrossSigningKeyRow> {
    keys.iter().find(|k| k.key_type == key_type)
}

/// Whether an upload needs user-interactive authentication: it does when the user already
/// has a master key and the upload brings a key that differs from the stored one (so a
/// first upload, or a retried identical one, goes without).
pub async fn upload_needs_auth(state: &AppState, me: &Identity, keys: &SigningKeys) -> Result<bool> {
    let current = cross_signing::keys(state.db.read(), me.user_id.as_str()).await?;
    if stored(&current, MASTER).is_none() {
        return Ok(false);
    }
    for (key_type, key) in keys.present() {
        let same = match stored(&current, key_type) {
            Some(row) => stored_object(&row.key_json)? == *key,
            None => false,
        };
        if !same {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Checks a cross-signing key object: its owner, its usage, exactly one ed25519 key named
/// after itself. Returns the public key (unpadded base64).
fn check_key(me: &Identity, usage: &str, key: &Map<String, Value>) -> Result<String> {
    let field = format!("{usage}_key");
    if key.get("user_id").and_then(Value::as_str) != Some(me.user_id.as_str()) {
        return Err(Error::invalid_param(format!("{field}.user_id does not match the authenticated user")));
    }
    let usages = key.get("usage").and_then(Value::as_array);
    if !usages.is_some_and(|u| u.iter().any(|u| u.as_str() == Some(usage))) {
        return Err(Error::invalid_param(format!("{field}.usage must contain {usage:?}")));
    }
    let keys = key.get("keys").and_then(Value::as_object).filter(|k| k.len() == 1);
    let Some((key_id, public_key)) = keys.and_then(|k| k.iter().next()) else {
        return Err(Error::invalid_param(format!("{field}.keys must hold exactly one key")));
    };
    let public_key = public_key.as_str().unwrap_or_default();
    let is_ed25519 = STANDARD_NO_PAD.decode(public_key).is_ok_and(|k| k.len() == 32);
    if key_id.strip_prefix("ed25519:") != Some(public_key) || !is_ed25519 {
        return Err(Error::invalid_param(format!("{field}.keys must be {{\"ed25519:<key>\": \"<key>\"}}")));
    }
    Ok(public_key.to_owned())
}

/// Stores uploaded cross-signing keys after checking them: the self-signing and
/// user-signing keys must be signed by the master key (the uploaded one, else the stored).
pub async fn upload(state: &AppState, me: &Identity, keys: SigningKeys) -> Result<()> {
    let user_id = me.user_id.as_str();
    let mut checked = Vec::new();
    for (key_type, key) in keys.present() {
        checked.push((key_type, check_key(me, key_type, key)?, key));
    }
    if checked.is_empty() {
        return Ok(());
    }
    let current = cross_signing::keys(state.db.read(), user_id).await?;
    let master = match checked.iter().find(|(t, ..)| *t == MASTER) {
        Some((_, public_key, _)) => Some(public_key.clone()),
        None => stored(&current, MASTER).map(|k| k.public_key.clone()),
    };
    for (key_type, _, key) in checked.iter().filter(|(t, ..)| *t != MASTER) {
        let Some(master) = &master else {
            return Err(Error::missing_param(format!("A {key_type} key needs a master signing key")));
        };
        verify_signature(key, user_id, &format!("ed25519:{master}"), master)?;
    }
    let devices = storage::devices::list(&state.db, user_id).await?;
    if checked.iter().any(|(_, public_key, _)| devices.iter().any(|d| d.device_id == *public_key)) {
        return Err(Error::forbidden("Key ID in use: a device has the ID of a cross-signing key"));
    }

    let mut tx = state.db.begin().await?;
    for (key_type, public_key, key) in &checked {
        let json = Value::Object((*key).clone()).to_string();
        cross_signing::set_key(&mut tx, user_id, key_type, public_key, &json).await?;
    }
    device_lists::record_change(&mut tx, user_id).await?;
    tx.commit().await?;
    state.notifier.notify([me.user_id.as_ref()]);
    super::device_lists::signing_keys_changed(state, &me.user_id).await
}

/// Stores the signatures of `/keys/signatures/upload` that check out; answers `failures`
/// for the others, by user and key ID.
pub async fn upload_signatures(
    state: &AppState,
    me: &Identity,
    signed: &BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
) -> Result<Map<String, Value>> {
    let own_keys = cross_signing::keys(state.db.read(), me.user_id.as_str()).await?;
    let mut accepted = Vec::new();
    let mut failures = Map::new();
    for (target_user, keys) in signed {
        for (key_id, object) in keys {
            let checked = match object.as_object() {
                Some(object) => check_signature(state, me, &own_keys, target_user, key_id, object).await,
                None => Err(Error::bad_json("A signed key must be a JSON object")),
            };
            match checked {
                Ok(rows) => accepted.extend(rows.into_iter().map(|row| (target_user, row))),
                Err(e) => {
                    let by_user = failures.entry(target_user.to_string()).or_insert_with(|| Value::Object(Map::new()));
                    if let Value::Object(by_user) = by_user {
                        by_user.insert(key_id.clone(), failure(e)?);
                    }
                }
            }
        }
    }
    if !accepted.is_empty() {
        let mut tx = state.db.begin().await?;
        for (target_user, row) in &accepted {
            cross_signing::add_signature(&mut tx, target_user.as_str(), row).await?;
        }
        // Signatures on another user's master key are only shown to the signer, so it is the
        // signer's own view of device lists that changed.
        device_lists::record_change(&mut tx, me.user_id.as_str()).await?;
        tx.commit().await?;
        state.notifier.notify([me.user_id.as_ref()]);
    }
    Ok(failures)
}

/// Checks one signed key of a signature upload; returns the signatures to store:
/// - own device, signed by own self-signing key;
/// - own master key, signed by own devices;
/// - another user's master key, signed by own user-signing key.
async fn check_signature(
    state: &AppState,
    me: &Identity,
    own_keys: &[CrossSigningKeyRow],
    target_user: &OwnedUserId,
    key_id: &str,
    signed: &Map<String, Value>,
) -> Result<Vec<SignatureRow>> {
    let signer = me.user_id.as_str();
    let row = |signer_key_id: String, signature: String| SignatureRow {
        target_key_id: key_id.to_owned(),
        signer_user_id: signer.to_owned(),
        signer_key_id,
        signature,
    };
    let must_match = |stored_json: &str| -> Result<()> {
        if signed_part(&stored_object(stored_json)?) != signed_part(signed) {
            return Err(Error::invalid_param("The signed object does not match the stored key"));
        }
        Ok(())
    };

    if *target_user != me.user_id {
        if !is_local(target_user, &state.config.server_name) {
            return Err(Error::not_found("Keys of users on other servers are not available yet"));
        }
        let user_signing =
            stored(own_keys, USER_SIGNING).ok_or_else(|| Error::not_found("You have no user-signing key"))?;
        let their_keys = cross_signing::keys(state.db.read(), target_user.as_str()).await?;
        let master = stored(&their_keys, MASTER).ok_or_else(|| Error::not_found("The user has no master key"))?;
        if master.public_key != key_id {
            return Err(Error::invalid_param("Only the master key of another user can be signed"));
        }
        must_match(&master.key_json)?;
        let signer_key_id = format!("ed25519:{}", user_signing.public_key);
        let signature = verify_signature(signed, signer, &signer_key_id, &user_signing.public_key)?;
        return Ok(vec![row(signer_key_id, signature)]);
    }

    if let Some(master) = stored(own_keys, MASTER).filter(|m| m.public_key == key_id) {
        must_match(&master.key_json)?;
        let signer_key_ids: Vec<String> = signed
            .get("signatures")
            .and_then(|s| s.get(signer))
            .and_then(Value::as_object)
            .map(|s| s.keys().filter(|k| **k != format!("ed25519:{}", master.public_key)).cloned().collect())
            .unwrap_or_default();
        let mut rows = Vec::new();
        for signer_key_id in signer_key_ids {
            let device_id = signer_key_id.strip_prefix("ed25519:").unwrap_or_default();
            let device_keys = e2ee_keys::device_keys(state.db.read(), signer, device_id)
                .await?
                .ok_or_else(|| Error::not_found(format!("No device keys for {signer_key_id}")))?;
            let device_ed25519 = stored_object(&device_keys)?
                .get("keys")
                .and_then(|k| k.get(&signer_key_id))
                .and_then(Value::as_str)
                .map(str::to_owned)
                .ok_or_else(|| Error::not_found(format!("No device keys for {signer_key_id}")))?;
            let signature = verify_signature(signed, signer, &signer_key_id, &device_ed25519)?;
            rows.push(row(signer_key_id, signature));
        }
        if rows.is_empty() {
            return Err(super::invalid_signature("No device signature on the master key"));
        }
        return Ok(rows);
    }

    let device_keys = e2ee_keys::device_keys(state.db.read(), signer, key_id)
        .await?
        .ok_or_else(|| Error::not_found(format!("Unknown device or key {key_id}")))?;
    let self_signing =
        stored(own_keys, SELF_SIGNING).ok_or_else(|| Error::not_found("You have no self-signing key"))?;
    must_match(&device_keys)?;
    let signer_key_id = format!("ed25519:{}", self_signing.public_key);
    let signature = verify_signature(signed, signer, &signer_key_id, &self_signing.public_key)?;
    Ok(vec![row(signer_key_id, signature)])
}
