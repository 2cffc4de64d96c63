//! End-to-end encryption support. The server never decrypts anything: it checks the
//! signatures it must (device self-signatures, cross-signing), stores and hands out keys,
//! relays to-device messages and keeps encrypted key backups.

pub mod backup;
pub mod cross_signing;
pub mod dehydrated;
pub mod device_lists;
pub mod keys;
pub mod remote;
pub mod to_device;

use std::collections::BTreeMap;

use axum::http::StatusCode;
use ruma::UserId;
use ruma::serde::Base64;
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};

/// 400 `M_INVALID_SIGNATURE`.
pub fn invalid_signature(msg: impl Into<String>) -> Error {
    Error::matrix(StatusCode::BAD_REQUEST, "M_INVALID_SIGNATURE", msg)
}

/// Checks the signature of `signer` with the ed25519 key `key_id` (`ed25519:NAME`), whose
/// public half is `public_key` (unpadded base64), on a signed JSON object, and returns it.
/// Other signatures on the object are not looked at.
pub fn verify_signature(object: &Map<String, Value>, signer: &str, key_id: &str, public_key: &str) -> Result<String> {
    let missing = || invalid_signature(format!("No signature by {signer} with {key_id}"));
    let signature = object
        .get("signatures")
        .and_then(|s| s.get(signer))
        .and_then(|s| s.get(key_id))
        .and_then(Value::as_str)
        .ok_or_else(missing)?;
    let mut only_this_signature = object.clone();
    only_this_signature.insert("signatures".into(), json!({ signer: { key_id: signature } }));
    let canonical = ruma::canonical_json::try_from_json_map(only_this_signature)
        .map_err(|e| Error::bad_json(format!("Signed object is not canonical JSON: {e}")))?;
    let public_key =
        Base64::parse(public_key).map_err(|_| invalid_signature(format!("Key {key_id} is not valid base64")))?;
    let keys = BTreeMap::from([(signer.to_owned(), BTreeMap::from([(key_id.to_owned(), public_key)]))]);
    ruma::signatures::verify_json(&keys, &canonical)
        .map_err(|e| invalid_signature(format!("Invalid signature by {signer} with {key_id}: {e}")))?;
    Ok(signature.to_owned())
}

/// An object without its `signatures` and `unsigned`: what a signature covers, to compare a
/// signed copy with the stored original.
fn signed_part(object: &Map<String, Value>) -> Map<String, Value> {
    object.iter().filter(|(k, _)| *k != "signatures" && *k != "unsigned").map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// Parses JSON this server stored itself.
fn stored_object(json: &str) -> Result<Map<String, Value>> {
    serde_json::from_str(json).map_err(|e| Error::Internal(anyhow::anyhow!("stored key JSON is invalid: {e}")))
}

/// A per-key failure of a multi-key request (`failures` of `/keys/signatures/upload`):
/// client errors become `{errcode, error}`, internal ones fail the whole request.
fn failure(e: Error) -> Result<Value> {
    match e {
        Error::Matrix { errcode, message, .. } => Ok(json!({ "errcode": errcode, "error": message })),
        other => Err(other),
    }
}

fn is_local(user_id: &UserId, server_name: &str) -> bool {
    user_id.server_name().as_str() == server_name
}
