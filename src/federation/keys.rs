//! Server signing keys: our own key response, other servers' keys fetched (directly, then
//! through the configured notaries), verified, stored with their validity, and served again
//! when acting as a notary.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::Method;
use ruma::room_version_rules::RoomVersionRules;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedServerName, ServerName};
use serde_json::{Value, json};

use crate::Services;
use crate::error::{Error, Result};
use crate::storage::{self, federation::SigningKey, now_ms};

/// How long other servers may use our key response.
const OWN_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;
/// Keys are never trusted further ahead than this from their fetch (spec: room version 5).
const MAX_VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;
/// The least time between two fetches of one server's keys.
const REFETCH_INTERVAL: Duration = Duration::from_secs(10);
const KEY_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Servers whose fetch state is kept before idle ones are forgotten.
const MAX_TRACKED_SERVERS: usize = 10_000;

/// What the keys of a server are needed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyUsage {
    /// Verifying a request signed now: current keys, valid now.
    Request,
    /// Verifying an event created at `origin_server_ts`: current keys (valid at that time
    /// when `enforce_valid_until`, room versions 5 and later) and old keys that had not
    /// expired by then.
    Event { origin_server_ts: i64, enforce_valid_until: bool },
}

impl KeyUsage {
    fn accepts(self, key: &SigningKey, now: i64) -> bool {
        match self {
            KeyUsage::Request => !key.old && key.valid_until_ts > now,
            KeyUsage::Event { origin_server_ts, enforce_valid_until } => {
                if key.old || enforce_valid_until {
                    key.valid_until_ts > origin_server_ts
                } else {
                    true
                }
            }
        }
    }

    /// The time keys must be valid at, asked of the servers that answer for them.
    fn valid_at(self, now: i64) -> i64 {
        match self {
            KeyUsage::Request => now,
            KeyUsage::Event { origin_server_ts, .. } => origin_server_ts,
        }
    }
}

/// The keys of one server a signature check needs.
#[derive(Debug, Clone)]
pub struct KeyNeed {
    pub server: OwnedServerName,
    /// The key IDs the signatures name: an unknown one makes the keys be fetched again.
    pub key_ids: Vec<String>,
    pub usage: KeyUsage,
}

/// Per-server locks so that concurrent checks fetch a server's keys once, with the time of
/// the last fetch attempt.
#[derive(Default)]
pub struct KeyFetches {
    last_attempt: Mutex<HashMap<OwnedServerName, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

impl KeyFetches {
    fn lock_for(&self, server: &ServerName) -> Arc<tokio::sync::Mutex<Option<Instant>>> {
        let mut map = self.last_attempt.lock().unwrap_or_else(|e| e.into_inner());
        // Origins are chosen by whoever sends a request: forget the idle ones now and then.
        if map.len() >= MAX_TRACKED_SERVERS {
            map.retain(|_, entry| {
                entry.try_lock().map_or(true, |last| last.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL))
            });
        }
        map.entry(server.to_owned()).or_default().clone()
    }
}

/// The public keys usable for each need, fetched when missing or no longer valid. A server
/// whose keys cannot be found has no (or fewer) entries; verification then fails.
pub async fn public_keys_for(svc: &Services, needs: &[KeyNeed]) -> Result<PublicKeyMap> {
    let mut map = PublicKeyMap::new();
    let now = now_ms();
    for need in needs {
        let keys = ensure_keys(svc, need, true).await?;
        let set = map.entry(need.server.to_string()).or_default();
        for key in keys.iter().filter(|k| need.usage.accepts(k, now)) {
            if let Ok(public_key) = Base64::parse(&key.public_key) {
                set.insert(key.key_id.clone(), public_key);
            }
        }
    }
    Ok(map)
}

/// The public keys needed to check the signatures of a PDU (servers per
/// `required_server_signatures_to_verify_event`, validity per the room version).
pub async fn keys_for_pdu(svc: &Services, pdu: &CanonicalJsonObject, rules: &RoomVersionRules) -> Result<PublicKeyMap> {
    let servers = ruma::signatures::required_server_signatures_to_verify_event(pdu, &rules.signatures)
        .map_err(|e| Error::bad_json(format!("Invalid PDU: {e}")))?;
    let origin_server_ts = match pdu.get("origin_server_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err(Error::bad_json("Invalid PDU: origin_server_ts is not an integer")),
    };
    let usage = KeyUsage::Event { origin_server_ts, enforce_valid_until: rules.enforce_key_validity };
    let needs: Vec<KeyNeed> = servers
        .into_iter()
        .map(|server| {
            let key_ids = signature_key_ids(pdu, server.as_str());
            KeyNeed { server, key_ids, usage }
        })
        .collect();
    public_keys_for(svc, &needs).await
}

fn signature_key_ids(object: &CanonicalJsonObject, server: &str) -> Vec<String> {
    match object.get("signatures").and_then(|s| s.as_object()).and_then(|s| s.get(server)) {
        Some(CanonicalJsonValue::Object(by_key)) => by_key.keys().cloned().collect(),
        _ => Vec::new(),
    }
}

fn satisfied(keys: &[SigningKey], need: &KeyNeed, now: i64) -> bool {
    let usable = |id: &str| keys.iter().any(|k| k.key_id == id && need.usage.accepts(k, now));
    if need.key_ids.is_empty() {
        keys.iter().any(|k| need.usage.accepts(k, now))
    } else {
        need.key_ids.iter().all(|id| usable(id))
    }
}

/// The stored keys of a server after fetching them if they do not satisfy `need`: from the
/// server itself, then (with `ask_notaries`) from each configured notary.
async fn ensure_keys(svc: &Services, need: &KeyNeed, ask_notaries: bool) -> Result<Vec<SigningKey>> {
    if need.server.as_str() == svc.config.server_name {
        return Ok(vec![own_key(svc)]);
    }
    let server = need.server.as_str();
    let keys = storage::federation::signing_keys(&svc.db, server).await?;
    if satisfied(&keys, need, now_ms()) {
        return Ok(keys);
    }
    let lock = svc.federation.key_fetches.lock_for(&need.server);
    let mut last_attempt = lock.lock().await;
    // Another check may have fetched them while this one waited.
    let keys = storage::federation::signing_keys(&svc.db, server).await?;
    if satisfied(&keys, need, now_ms()) || last_attempt.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
        return Ok(keys);
    }
    *last_attempt = Some(Instant::now());
    if let Err(e) = fetch_direct(svc, &need.server).await {
        tracing::info!(server, error = %e, "cannot fetch the server's keys from itself");
    }
    let mut keys = storage::federation::signing_keys(&svc.db, server).await?;
    if !ask_notaries {
        return Ok(keys);
    }
    for notary in &svc.config.federation.notary_servers {
        if satisfied(&keys, need, now_ms()) {
            break;
        }
        let Ok(notary) = <&ServerName>::try_from(notary.as_str()) else { continue };
        if notary == need.server || notary.as_str() == svc.config.server_name {
            continue;
        }
        if let Err(e) = Box::pin(fetch_from_notary(svc, notary, need)).await {
            tracing::info!(server, %notary, error = %e, "cannot fetch the server's keys from a notary");
        }
        keys = storage::federation::signing_keys(&svc.db, server).await?;
    }
    Ok(keys)
}

fn own_key(svc: &Services) -> SigningKey {
    SigningKey {
        key_id: svc.server_key.key_id.clone(),
        public_key: svc.server_key.public_key_b64.clone(),
        valid_until_ts: i64::MAX,
        old: false,
    }
}

/// Our key response (`GET /_matrix/key/v2/server`), self-signed.
pub fn own_key_response(svc: &Services) -> Result<CanonicalJsonObject> {
    let key = &svc.server_key;
    let body = json!({
        "server_name": svc.config.server_name,
        "verify_keys": { &key.key_id: { "key": key.public_key_b64 } },
        "old_verify_keys": {},
        "valid_until_ts": now_ms() + OWN_VALIDITY_MS,
    });
    let mut object = to_object(body).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    key.sign_json(&svc.config.server_name, &mut object)?;
    Ok(object)
}

fn to_object(value: Value) -> Result<CanonicalJsonObject, String> {
    match CanonicalJsonValue::try_from(value) {
        Ok(CanonicalJsonValue::Object(object)) => Ok(object),
        Ok(_) => Err("not a JSON object".into()),
        Err(e) => Err(format!("not canonical JSON: {e}")),
    }
}

/// A key response whose self-signature verified.
#[derive(Debug)]
struct VerifiedResponse {
    keys: Vec<SigningKey>,
    valid_until_ts: i64,
    /// The response with the server's own signatures only.
    object: CanonicalJsonObject,
}

/// Checks a key response of `server` (fetched at `now`): its server name, and that every
/// signature of the server by one of its verify keys verifies, with at least one.
fn verify_key_response(
    mut object: CanonicalJsonObject,
    server: &ServerName,
    now: i64,
) -> Result<VerifiedResponse, String> {
    if object.get("server_name").and_then(|v| v.as_str()) != Some(server.as_str()) {
        return Err("the response is for another server".into());
    }
    let valid_until_ts = match object.get("valid_until_ts") {
        Some(CanonicalJsonValue::Integer(ts)) => i64::from(*ts),
        _ => return Err("valid_until_ts is missing".into()),
    };
    let entries = |field: &str| -> Result<Vec<(String, String, Option<i64>)>, String> {
        let Some(map) = object.get(field) else { return Ok(Vec::new()) };
        let map = map.as_object().ok_or(format!("{field} is not an object"))?;
        map.iter()
            .map(|(id, entry)| {
                let key = entry.as_object().and_then(|e| e.get("key")).and_then(|k| k.as_str());
                let key = key.ok_or(format!("{field}.{id} has no key"))?;
                Base64::<ruma::serde::base64::Standard>::parse(key)
                    .map_err(|_| format!("{field}.{id} is not base64"))?;
                let expired = match entry.as_object().and_then(|e| e.get("expired_ts")) {
                    Some(CanonicalJsonValue::Integer(ts)) => Some(i64::from(*ts)),
                    _ => None,
                };
                Ok((id.clone(), key.to_owned(), expired))
            })
            .collect()
    };
    let verify_keys = entries("verify_keys")?;
    if verify_keys.is_empty() {
        return Err("verify_keys is empty".into());
    }
    let old_keys = entries("old_verify_keys")?;
    let set: PublicKeySet =
        verify_keys.iter().filter_map(|(id, key, _)| Base64::parse(key).ok().map(|k| (id.clone(), k))).collect();
    only_signatures_of(&mut object, server.as_str());
    ruma::signatures::verify_json(&[(server.to_string(), set)].into(), &object)
        .map_err(|e| format!("the self-signature does not verify: {e}"))?;
    let current_until = valid_until_ts.min(now + MAX_VALIDITY_MS);
    let mut keys: Vec<SigningKey> = old_keys
        .into_iter()
        .map(|(key_id, public_key, expired)| SigningKey {
            key_id,
            public_key,
            valid_until_ts: expired.unwrap_or(0),
            old: true,
        })
        .collect();
    keys.extend(verify_keys.into_iter().map(|(key_id, public_key, _)| SigningKey {
        key_id,
        public_key,
        valid_until_ts: current_until,
        old: false,
    }));
    Ok(VerifiedResponse { keys, valid_until_ts, object })
}

/// Keeps only the signatures of `server` (dropping a notary's).
fn only_signatures_of(object: &mut CanonicalJsonObject, server: &str) {
    if let Some(CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.retain(|name, _| name == server);
    }
}

async fn store(svc: &Services, server: &ServerName, verified: &VerifiedResponse, now: i64) -> Result<()> {
    let json = CanonicalJsonValue::Object(verified.object.clone()).to_string();
    let mut tx = svc.db.begin().await?;
    storage::federation::store_key_response(
        &mut tx,
        server.as_str(),
        &verified.keys,
        &json,
        verified.valid_until_ts,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// `GET /_matrix/key/v2/server` of the server itself.
async fn fetch_direct(svc: &Services, server: &ServerName) -> Result<(), String> {
    let response: Value = super::client::request_with_timeout(
        svc,
        server,
        Method::GET,
        "/_matrix/key/v2/server",
        None,
        KEY_REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    let now = now_ms();
    let verified = verify_key_response(to_object(response)?, server, now)?;
    store(svc, server, &verified, now).await.map_err(|e| e.to_string())
}

/// `POST /_matrix/key/v2/query` to a notary, whose own signature is checked with its keys
/// fetched directly.
async fn fetch_from_notary(svc: &Services, notary: &ServerName, need: &KeyNeed) -> Result<(), String> {
    let now = now_ms();
    let criteria: BTreeMap<&str, Value> = need
        .key_ids
        .iter()
        .map(|id| (id.as_str(), json!({ "minimum_valid_until_ts": need.usage.valid_at(now) })))
        .collect();
    let body = json!({ "server_keys": { need.server.as_str(): criteria } });
    let response: Value = super::client::request_with_timeout(
        svc,
        notary,
        Method::POST,
        "/_matrix/key/v2/query",
        Some(&body),
        KEY_REQUEST_TIMEOUT,
    )
    .await
    .map_err(|e| e.to_string())?;
    let notary_need = KeyNeed { server: notary.to_owned(), key_ids: Vec::new(), usage: KeyUsage::Request };
    let notary_keys = ensure_keys(svc, &notary_need, false).await.map_err(|e| e.to_string())?;
    let notary_set: PublicKeySet = notary_keys
        .iter()
        .filter(|k| KeyUsage::Request.accepts(k, now))
        .filter_map(|k| Base64::parse(&k.public_key).ok().map(|b| (k.key_id.clone(), b)))
        .collect();
    if notary_set.is_empty() {
        return Err("no usable key of the notary".into());
    }
    let answers = response.get("server_keys").and_then(Value::as_array).ok_or("server_keys is not an array")?;
    let mut stored = 0;
    for answer in answers {
        let object = to_object(answer.clone())?;
        if object.get("server_name").and_then(|v| v.as_str()) != Some(need.server.as_str()) {
            continue;
        }
        let mut by_notary = object.clone();
        only_signatures_of(&mut by_notary, notary.as_str());
        ruma::signatures::verify_json(&[(notary.to_string(), notary_set.clone())].into(), &by_notary)
            .map_err(|e| format!("the notary's signature does not verify: {e}"))?;
        let verified = verify_key_response(object, &need.server, now)?;
        store(svc, &need.server, &verified, now).await.map_err(|e| e.to_string())?;
        stored += 1;
    }
    if stored == 0 {
        return Err("the notary has no keys of the server".into());
    }
    Ok(())
}

/// The key response of `server` as a notary answers it (co-signed by us): our own, or the
/// stored one, fetched again from the server if it does not last until
/// `minimum_valid_until_ts` or is past half its lifetime (spec). A stale stored response is
/// still answered when the server cannot be reached. None when nothing is known.
pub async fn notary_response(
    svc: &Services,
    server: &ServerName,
    minimum_valid_until_ts: i64,
) -> Result<Option<CanonicalJsonObject>> {
    if server.as_str() == svc.config.server_name {
        return own_key_response(svc).map(Some);
    }
    let now = now_ms();
    let fresh = |r: &storage::federation::KeyResponse| {
        r.valid_until_ts >= minimum_valid_until_ts && now < r.fetched_ts + (r.valid_until_ts - r.fetched_ts) / 2
    };
    let mut stored = storage::federation::key_response(&svc.db, server.as_str()).await?;
    if !stored.as_ref().is_some_and(fresh) {
        let lock = svc.federation.key_fetches.lock_for(server);
        let mut last_attempt = lock.lock().await;
        if !last_attempt.is_some_and(|t| t.elapsed() < REFETCH_INTERVAL) {
            *last_attempt = Some(Instant::now());
            if let Err(e) = fetch_direct(svc, server).await {
                tracing::info!(%server, error = %e, "notary: cannot fetch the server's keys");
            }
        }
        stored = storage::federation::key_response(&svc.db, server.as_str()).await?;
    }
    let Some(stored) = stored else { return Ok(None) };
    let value: Value = serde_json::from_str(&stored.response_json).map_err(|e| Error::Internal(e.into()))?;
    let mut object = to_object(value).map_err(|e| Error::Internal(anyhow::anyhow!(e)))?;
    svc.server_key.sign_json(&svc.config.server_name, &mut object)?;
    Ok(Some(object))
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruma::signatures::Ed25519KeyPair;

    fn key_pair(version: &str) -> Ed25519KeyPair {
        Ed25519KeyPair::from_der(&Ed25519KeyPair::generate(), version.into()).unwrap()
    }

    fn public_b64(pair: &Ed25519KeyPair) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(pair.public_key())
    }

    fn signed_response(server: &str, pair: &Ed25519KeyPair, valid_until_ts: i64) -> CanonicalJsonObject {
        let mut object = to_object(json!({
            "server_name": server,
            "verify_keys": { format!("ed25519:{}", pair.version()): { "key": public_b64(pair) } },
            "old_verify_keys": { "ed25519:old": { "key": public_b64(&key_pair("old")), "expired_ts": 1000 } },
            "valid_until_ts": valid_until_ts,
        }))
        .unwrap();
        ruma::signatures::sign_json(server, pair, &mut object).unwrap();
        object
    }

    #[test]
    fn self_signed_responses_verify() {
        let pair = key_pair("k1");
        let server: &ServerName = "remote.org".try_into().unwrap();
        let now = 1_000_000;
        let verified = verify_key_response(signed_response("remote.org", &pair, now + 3_600_000), server, now).unwrap();
        let current = verified.keys.iter().find(|k| k.key_id == "ed25519:k1").unwrap();
        assert_eq!((current.valid_until_ts, current.old), (now + 3_600_000, false));
        let old = verified.keys.iter().find(|k| k.key_id == "ed25519:old").unwrap();
        assert_eq!((old.valid_until_ts, old.old), (1000, true));

        // Validity is capped at 7 days from the fetch.
        let verified =
            verify_key_response(signed_response("remote.org", &pair, 9_007_199_254_740_991), server, now).unwrap();
        assert!(verified.keys.iter().any(|k| k.valid_until_ts == now + MAX_VALIDITY_MS));

        // Another server's response, a forged signature, a tampered field.
        assert!(verify_key_response(signed_response("other.org", &pair, now), server, now).is_err());
        let mut forged = signed_response("remote.org", &pair, now);
        let other = signed_response("remote.org", &key_pair("k1"), now);
        forged.insert("signatures".into(), other["signatures"].clone());
        assert!(verify_key_response(forged, server, now).is_err());
        let mut tampered = signed_response("remote.org", &pair, now);
        tampered.insert("valid_until_ts".into(), CanonicalJsonValue::Integer(5.into()));
        assert!(verify_key_response(tampered, server, now).is_err());
        let mut unsigned = signed_response("remote.org", &pair, now);
        unsigned.remove("signatures");
        assert!(verify_key_response(unsigned, server, now).is_err());
    }

    #[test]
    fn key_usage_honours_validity() {
        let current =
            SigningKey { key_id: "ed25519:a".into(), public_key: String::new(), valid_until_ts: 5000, old: false };
        let old = SigningKey { old: true, ..current.clone() };
        // Requests: current keys valid now only.
        assert!(KeyUsage::Request.accepts(&current, 4999));
        assert!(!KeyUsage::Request.accepts(&current, 5000));
        assert!(!KeyUsage::Request.accepts(&old, 0));
        // Room versions 5 and later: valid at the event's time.
        let event = |ts| KeyUsage::Event { origin_server_ts: ts, enforce_valid_until: true };
        assert!(event(4000).accepts(&current, 9999));
        assert!(!event(6000).accepts(&current, 0));
        assert!(event(4000).accepts(&old, 0));
        assert!(!event(6000).accepts(&old, 0));
        // Room versions 1 to 4: valid_until_ts ignored, expired old keys still refused.
        let legacy = |ts| KeyUsage::Event { origin_server_ts: ts, enforce_valid_until: false };
        assert!(legacy(6000).accepts(&current, 0));
        assert!(!legacy(6000).accepts(&old, 0));
        assert!(legacy(4000).accepts(&old, 0));
    }
}
