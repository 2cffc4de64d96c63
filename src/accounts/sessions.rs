//! In-memory bookkeeping of login sessions, so that the authentication hot path does not
//! write to the database on every request:
//! - when each device was last seen (stored at most once per `LAST_SEEN_INTERVAL`);
//! - which refresh token a refreshed session must revoke when its new access token is first
//!   used (the spec keeps the old refresh token valid until then, so that a client that lost
//!   the answer of `/refresh` can repeat it). After a restart the old refresh token stays
//!   valid until the new refresh token is used or the device logs out. The entry is
//!   announced to the other processes of the database, where the new token may be used.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ruma::OwnedUserId;

use crate::cluster::{Message, Publisher};
use crate::storage::{self, Db};

/// How often a device's `last_seen_ts`/`last_seen_ip` are written at most.
pub const LAST_SEEN_INTERVAL: Duration = Duration::from_secs(5 * 60);

/// Entries kept before stale ones are swept out of the last-seen map.
const SWEEP_ABOVE: usize = 100_000;

#[derive(Default)]
pub struct SessionTracker {
    /// (user, device) -> when its last-seen columns were last written.
    last_seen: Mutex<HashMap<(OwnedUserId, String), Instant>>,
    /// (user, device) -> (hash of its refreshed access token, hash of the refresh token that
    /// token supersedes).
    superseded_refresh: Mutex<HashMap<(OwnedUserId, String), (String, String)>>,
    /// The other processes of the database.
    others: Publisher,
}

impl SessionTracker {
    pub fn new(others: Publisher) -> Self {
        SessionTracker { others, ..Default::default() }
    }

    /// Records an authenticated request of a device; writes its last-seen time and address
    /// when they were not written in the last `LAST_SEEN_INTERVAL`.
    pub async fn seen(&self, db: &Db, user_id: &OwnedUserId, device_id: &str, ip: IpAddr) {
        let now = Instant::now();
        {
            let mut map = self.last_seen.lock().unwrap_or_else(|e| e.into_inner());
            let key = (user_id.clone(), device_id.to_owned());
            if map.get(&key).is_some_and(|at| now.duration_since(*at) < LAST_SEEN_INTERVAL) {
                return;
            }
            if map.len() >= SWEEP_ABOVE {
                map.retain(|_, at| now.duration_since(*at) < LAST_SEEN_INTERVAL);
            }
            map.insert(key, now);
        }
        // Losing a last-seen update is harmless; the request itself must not fail for it.
        if let Err(e) = storage::devices::touch(db, user_id.as_str(), device_id, Some(&ip.to_string())).await {
            tracing::warn!(error = %e, %user_id, device_id, "cannot record device activity");
        }
    }

    /// Remembers that `old_refresh_hash` is to be revoked once the device's new access token
    /// `new_access_hash` is used. A later refresh of the same device replaces the entry.
    pub fn supersede(&self, user_id: &OwnedUserId, device_id: &str, new_access_hash: String, old_refresh_hash: String) {
        self.others.send(Message::RefreshSuperseded {
            user: user_id.clone(),
            device: device_id.to_owned(),
            new_access_hash: new_access_hash.clone(),
            old_refresh_hash: old_refresh_hash.clone(),
        });
        self.supersede_here(user_id, device_id, new_access_hash, old_refresh_hash);
    }

    /// `supersede` in this process only (announced by another).
    pub fn supersede_here(
        &self,
        user_id: &OwnedUserId,
        device_id: &str,
        new_access_hash: String,
        old_refresh_hash: String,
    ) {
        let mut map = self.superseded_refresh.lock().unwrap_or_else(|e| e.into_inner());
        map.insert((user_id.clone(), device_id.to_owned()), (new_access_hash, old_refresh_hash));
    }

    /// The refresh token to revoke now that the device's access token `access_hash` is used.
    pub fn take_superseded(&self, user_id: &OwnedUserId, device_id: &str, access_hash: &str) -> Option<String> {
        let mut map = self.superseded_refresh.lock().unwrap_or_else(|e| e.into_inner());
        let key = (user_id.clone(), device_id.to_owned());
        match map.get(&key) {
            Some((new_access, _)) if new_access == access_hash => map.remove(&key).map(|(_, old)| old),
            _ => None,
        }
    }
}
