//! Keys of other servers' users for `/keys/query` and `/keys/claim`: one federation request
//! per server, all in parallel within the client's time limit. Answers are checked before
//! they reach the client: only users and devices that were asked for, of the server that
//! answered, device keys signed by their own ed25519 key, self-signing keys signed by the
//! master key. Nothing is cached: every query goes to the user's server.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::http::Method;
use futures::future::join_all;
use ruma::{OwnedServerName, OwnedUserId, ServerName};
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::verify_signature;
use crate::Services;
use crate::federation::client::{self, FederationError};

/// The time limit when the client names none (the spec's default).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Groups requests per server of the users they name.
pub fn by_server<T>(wanted: BTreeMap<OwnedUserId, T>) -> BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> {
    let mut grouped: BTreeMap<OwnedServerName, BTreeMap<OwnedUserId, T>> = BTreeMap::new();
    for (user, value) in wanted {
        grouped.entry(user.server_name().to_owned()).or_default().insert(user, value);
    }
    grouped
}

/// The `failures` entry of a server that did not answer (as Synapse reports it).
fn failure(e: &FederationError) -> Value {
    let status = match e {
        FederationError::Remote { status, .. } => status.as_u16(),
        _ => 503,
    };
    json!({ "status": status, "message": e.to_string() })
}

/// Asks every server at once; answers each server's result.
async fn ask_all<T: serde::de::DeserializeOwned>(
    svc: &Services,
    path: &str,
    bodies: BTreeMap<OwnedServerName, Value>,
    timeout: Duration,
) -> Vec<(OwnedServerName, Result<T, FederationError>)> {
    join_all(bodies.into_iter().map(|(server, body)| async move {
        let answer = client::request_with_timeout(svc, &server, Method::POST, path, Some(&body), timeout).await;
        if let Err(e) = &answer {
            tracing::info!(%server, error = %e, "remote key request failed");
        }
        (server, answer)
    }))
    .await
}

/// What `/keys/query` gathers about remote users (merged into the local answer).
#[derive(Default)]
pub struct QueryAnswer {
    pub device_keys: Map<String, Value>,
    pub master_keys: Map<String, Value>,
    pub self_signing_keys: Map<String, Value>,
    pub failures: Map<String, Value>,
}

#[derive(Deserialize)]
struct RemoteQueryAnswer {
    #[serde(default)]
    device_keys: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
    #[serde(default)]
    master_keys: BTreeMap<OwnedUserId, Value>,
    #[serde(default)]
    self_signing_keys: BTreeMap<OwnedUserId, Value>,
}

/// Device and cross-signing keys of remote users (`wanted`: user to devices, none for all).
pub async fn query(svc: &Services, wanted: BTreeMap<OwnedUserId, Vec<String>>, timeout: Duration) -> QueryAnswer {
    let grouped = by_server(wanted);
    let bodies = grouped.iter().map(|(server, users)| (server.clone(), json!({ "device_keys": users }))).collect();
    let answers = ask_all::<RemoteQueryAnswer>(svc, "/_matrix/federation/v1/user/keys/query", bodies, timeout).await;
    let mut merged = QueryAnswer::default();
    for (server, answer) in answers {
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                merged.failures.insert(server.to_string(), failure(&e));
                continue;
            }
        };
        let asked = &grouped[&server];
        for (user, devices) in answer.device_keys {
            let Some(wanted_devices) = asked.get(&user) else { continue };
            let checked: Map<String, Value> = devices
                .into_iter()
                .filter(|(device, _)| wanted_devices.is_empty() || wanted_devices.contains(device))
                .filter(|(device, keys)| valid_device_keys(&server, &user, device, keys))
                .collect();
            merged.device_keys.insert(user.to_string(), Value::Object(checked));
        }
        for (user, master) in answer.master_keys {
            if !asked.contains_key(&user) || !valid_cross_signing_key(&user, &master, "master") {
                continue;
            }
            if let Some(self_signing) = answer.self_signing_keys.get(&user)
                && valid_cross_signing_key(&user, self_signing, "self_signing")
                && signed_by_master(&user, self_signing, &master)
            {
                merged.self_signing_keys.insert(user.to_string(), self_signing.clone());
            }
            merged.master_keys.insert(user.to_string(), master);
        }
    }
    merged
}

/// Device keys naming the user and device they were given for, signed by the device's own
/// ed25519 key.
fn valid_device_keys(server: &ServerName, user: &OwnedUserId, device: &str, keys: &Value) -> bool {
    let Some(object) = keys.as_object() else { return false };
    let key_id = format!("ed25519:{device}");
    let valid = object.get("user_id").and_then(Value::as_str) == Some(user.as_str())
        && object.get("device_id").and_then(Value::as_str) == Some(device)
        && object.get("keys").and_then(|k| k.get(&key_id)).and_then(Value::as_str).is_some_and(|public| {
            let mut signed = object.clone();
            signed.remove("unsigned");
            verify_signature(&signed, user.as_str(), &key_id, public).is_ok()
        });
    if !valid {
        tracing::warn!(%server, %user, device, "dropping invalid device keys from a remote server");
    }
    valid
}

/// A cross-signing key of `user` for `usage`, with exactly one public key.
fn valid_cross_signing_key(user: &OwnedUserId, key: &Value, usage: &str) -> bool {
    key.get("user_id").and_then(Value::as_str) == Some(user.as_str())
        && key.get("usage").and_then(Value::as_array).is_some_and(|u| u.iter().any(|v| v == usage))
        && single_public_key(key).is_some()
}

/// The (key ID, public key) of a cross-signing key.
fn single_public_key(key: &Value) -> Option<(&str, &str)> {
    let keys = key.get("keys")?.as_object()?;
    let (id, public) = keys.iter().next().filter(|_| keys.len() == 1)?;
    Some((id.as_str(), public.as_str()?))
}

fn signed_by_master(user: &OwnedUserId, key: &Value, master: &Value) -> bool {
    let (Some(object), Some((master_id, master_public))) = (key.as_object(), single_public_key(master)) else {
        return false;
    };
    verify_signature(object, user.as_str(), master_id, master_public).is_ok()
}

#[derive(Deserialize)]
struct RemoteClaimAnswer {
    #[serde(default)]
    one_time_keys: BTreeMap<OwnedUserId, BTreeMap<String, BTreeMap<String, Value>>>,
}

/// One-time keys of remote users' devices (`wanted`: user to device to algorithm); answers
/// the claimed keys and the failures.
pub async fn claim(
    svc: &Services,
    wanted: BTreeMap<OwnedUserId, BTreeMap<String, String>>,
    timeout: Duration,
) -> (Map<String, Value>, Map<String, Value>) {
    let grouped = by_server(wanted);
    let bodies = grouped.iter().map(|(server, users)| (server.clone(), json!({ "one_time_keys": users }))).collect();
    let answers = ask_all::<RemoteClaimAnswer>(svc, "/_matrix/federation/v1/user/keys/claim", bodies, timeout).await;
    let (mut claimed, mut failures) = (Map::new(), Map::new());
    for (server, answer) in answers {
        let answer = match answer {
            Ok(answer) => answer,
            Err(e) => {
                failures.insert(server.to_string(), failure(&e));
                continue;
            }
        };
        let asked = &grouped[&server];
        for (user, devices) in answer.one_time_keys {
            let Some(wanted_devices) = asked.get(&user) else { continue };
            // One key per device, of the algorithm asked for.
            let keys: Map<String, Value> = devices
                .into_iter()
                .filter(|(device, keys)| {
                    wanted_devices.get(device).is_some_and(|algorithm| {
                        keys.len() == 1 && keys.keys().all(|id| id.split_once(':').is_some_and(|(a, _)| a == algorithm))
                    })
                })
                .map(|(device, keys)| (device, json!(keys)))
                .collect();
            if !keys.is_empty() {
                claimed.insert(user.to_string(), Value::Object(keys));
            }
        }
    }
    (claimed, failures)
}
