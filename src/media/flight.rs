//! One at a time per key: a remote fetch or a thumbnail render in progress is waited for by
//! whoever asks for the same thing, who then finds the result in the cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OwnedMutexGuard;

/// Work in progress, by what it makes.
#[derive(Default)]
pub struct InFlight {
    running: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The right to do one piece of work; the entry goes when its last holder or waiter is done.
pub struct Turn<'a> {
    flights: &'a InFlight,
    key: String,
    _held: OwnedMutexGuard<()>,
}

impl InFlight {
    /// Waits until nobody else works on `key`, then holds it.
    pub async fn hold(&self, key: String) -> Turn<'_> {
        let lock = self.running.lock().unwrap_or_else(|e| e.into_inner()).entry(key.clone()).or_default().clone();
        Turn { flights: self, key, _held: lock.lock_owned().await }
    }
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        let mut running = self.flights.running.lock().unwrap_or_else(|e| e.into_inner());
        // Held by the map and this turn only: nobody waits for it.
        if running.get(&self.key).is_some_and(|lock| Arc::strong_count(lock) <= 2) {
            running.remove(&self.key);
        }
    }
}
