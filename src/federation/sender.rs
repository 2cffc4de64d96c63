//! The outbound queue: PDUs and EDUs are stored per destination (so they survive a
//! restart) and sent as transactions (`PUT /_matrix/federation/v1/send/{txnId}`), one in
//! flight per destination, at most 50 PDUs and 100 EDUs each. A destination that fails is
//! retried with exponential backoff, and at once when it contacts us (it is back).
//! With several processes on one database, the loop runs on the leader only (see
//! `cluster::leader`); the others announce what they queue and which servers reached them.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use axum::http::Method;
use ruma::{EventId, OwnedServerName, ServerName};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::transaction::{MAX_EDUS, MAX_PDUS};
use crate::Services;
use crate::cluster::{self, Message, leader};
use crate::error::Result;
use crate::storage::script::Script;
use crate::storage::{self, Tx, now_ms};

const MIN_BACKOFF: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(600);

enum Signal {
    /// New items were queued for the destination.
    Queued(OwnedServerName),
    /// The destination reached us: it is up, retry at once.
    Up(OwnedServerName),
}

/// The handle the rest of the server uses; the work is done by `run`.
pub struct Sender {
    signals: mpsc::UnboundedSender<Signal>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<Signal>>>,
    /// Destinations in backoff, so that `mark_up` only signals those.
    failing: Mutex<HashSet<OwnedServerName>>,
}

impl Default for Sender {
    fn default() -> Self {
        let (signals, receiver) = mpsc::unbounded_channel();
        Sender { signals, receiver: Mutex::new(Some(receiver)), failing: Mutex::default() }
    }
}

impl Sender {
    /// Called for every authenticated request from `origin`.
    pub async fn mark_up(svc: &Services, origin: &ServerName) {
        let failing = svc.federation.sender.failing.lock().unwrap_or_else(|e| e.into_inner()).contains(origin);
        if failing {
            cluster::publish(svc, Message::FederationUp { destination: origin.to_owned() }).await;
        }
    }

    /// Wakes this process's loop for a destination with new items.
    pub(crate) fn signal_queued(&self, destination: &ServerName) {
        let _ = self.signals.send(Signal::Queued(destination.to_owned()));
    }

    /// Wakes this process's loop for a destination that reached us.
    pub(crate) fn signal_up(&self, destination: &ServerName) {
        let _ = self.signals.send(Signal::Up(destination.to_owned()));
    }

    pub(crate) fn set_failing(&self, destination: &ServerName, failing: bool) {
        let mut set = self.failing.lock().unwrap_or_else(|e| e.into_inner());
        if failing {
            set.insert(destination.to_owned());
        } else {
            set.remove(destination);
        }
    }
}

/// Queues a PDU of ours (stored in `events`) for the given servers (ours is skipped).
pub async fn send_pdu<'a>(
    svc: &Services,
    destinations: impl IntoIterator<Item = &'a ServerName>,
    event_id: &EventId,
) -> Result<()> {
    let destinations = others(svc, destinations);
    if destinations.is_empty() {
        return Ok(());
    }
    let mut tx = svc.db.begin().await?;
    queue_pdu_in(&mut tx, &destinations, event_id).await?;
    tx.commit().await?;
    wake(svc, destinations).await;
    Ok(())
}

/// Queues a PDU of ours for some servers (`others`) in the transaction that stores it, so that
/// a crash cannot keep the event and lose its sending; the caller `wake`s them after the commit.
pub async fn queue_pdu_in(tx: &mut Tx, destinations: &[OwnedServerName], event_id: &EventId) -> Result<()> {
    let now = now_ms();
    // A statement per thousand destinations (bind parameters are limited).
    for chunk in destinations.chunks(1000) {
        let names: Vec<&str> = chunk.iter().map(|d| d.as_str()).collect();
        storage::federation::enqueue_pdu(tx, &names, event_id.as_str(), now).await?;
    }
    Ok(())
}

/// `queue_pdu_in` in the script that appends the PDU.
pub fn queue_pdu_in_script(script: &mut Script, destinations: &[OwnedServerName], event_id: &EventId) {
    let names: Vec<&str> = destinations.iter().map(|d| d.as_str()).collect();
    storage::federation::enqueue_pdu_in_script(script, &names, event_id.as_str(), now_ms());
}

/// Queues an EDU for the given servers (ours is skipped).
pub async fn send_edu<'a>(
    svc: &Services,
    destinations: impl IntoIterator<Item = &'a ServerName>,
    edu_type: &str,
    content: Value,
) -> Result<()> {
    let destinations = others(svc, destinations);
    if destinations.is_empty() {
        return Ok(());
    }
    let edu = json!({ "edu_type": edu_type, "content": content }).to_string();
    let mut tx = svc.db.begin().await?;
    let now = now_ms();
    for destination in &destinations {
        storage::federation::enqueue_edu(&mut tx, destination.as_str(), &edu, now).await?;
    }
    tx.commit().await?;
    wake(svc, destinations).await;
    Ok(())
}

pub(crate) fn others<'a>(
    svc: &Services,
    destinations: impl IntoIterator<Item = &'a ServerName>,
) -> Vec<OwnedServerName> {
    let set: HashSet<&ServerName> = destinations.into_iter().filter(|d| d.as_str() != svc.config.server_name).collect();
    set.into_iter().map(ToOwned::to_owned).collect()
}

/// Tells the sender (on whichever process leads) that items were queued for these
/// destinations.
pub async fn wake(svc: &Services, destinations: Vec<OwnedServerName>) {
    for destination in destinations {
        cluster::publish(svc, Message::FederationQueued { destination }).await;
    }
}

/// What the sender knows of a destination.
#[derive(Default)]
struct Destination {
    /// Items may be queued that no delivery has seen yet.
    pending: bool,
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl Destination {
    fn ready(&self, now: Instant) -> bool {
        self.pending && !self.in_flight && self.retry_at.is_none_or(|t| t <= now)
    }
}

fn backoff(failures: u32) -> Duration {
    MIN_BACKOFF.saturating_mul(1 << failures.saturating_sub(1).min(16)).min(MAX_BACKOFF)
}

/// The sender's loop, until the server is dropped, while this process leads. Holds only a
/// weak reference so that a stopped server (tests start many) goes away.
pub async fn run(services: Weak<Services>) {
    let (mut signals, mut leading) = {
        let Some(svc) = services.upgrade() else { return };
        let Some(signals) = svc.federation.sender.receiver.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        (signals, svc.cluster.leader())
    };
    while leader::until_leading(&mut leading, &mut signals).await {
        let destinations = {
            let Some(svc) = services.upgrade() else { return };
            match load(&svc).await {
                Ok(destinations) => destinations,
                Err(e) => {
                    tracing::error!(error = %e, "federation sender: cannot load the queue; not sending");
                    return;
                }
            }
        };
        if !send_while_leading(&services, &mut signals, &mut leading, destinations).await {
            return;
        }
    }
}

/// Sends what is queued and signalled until this process stops leading (true) or the
/// server is gone (false).
async fn send_while_leading(
    services: &Weak<Services>,
    signals: &mut mpsc::UnboundedReceiver<Signal>,
    leading: &mut tokio::sync::watch::Receiver<bool>,
    mut destinations: HashMap<OwnedServerName, Destination>,
) -> bool {
    let (done_tx, mut done) = mpsc::unbounded_channel::<(OwnedServerName, bool)>();
    loop {
        let now = Instant::now();
        for (name, destination) in destinations.iter_mut().filter(|(_, d)| d.ready(now)) {
            destination.pending = false;
            destination.in_flight = true;
            tokio::spawn(deliver(services.clone(), name.clone(), done_tx.clone()));
        }
        let next_retry = destinations
            .values()
            .filter(|d| d.pending && !d.in_flight)
            .filter_map(|d| d.retry_at)
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            signal = signals.recv() => match signal {
                None => return false,
                Some(Signal::Queued(name)) => destinations.entry(name).or_default().pending = true,
                Some(Signal::Up(name)) => {
                    let destination = destinations.entry(name.clone()).or_default();
                    if destination.failures > 0 {
                        tracing::info!(destination = %name, "destination is back; retrying now");
                        destination.failures = 0;
                        destination.retry_at = None;
                        destination.pending = true;
                        record(services, &name, 0, None).await;
                    }
                }
            },
            Some((name, delivered)) = done.recv() => {
                let destination = destinations.entry(name.clone()).or_default();
                destination.in_flight = false;
                if delivered {
                    if destination.failures > 0 {
                        destination.failures = 0;
                        destination.retry_at = None;
                        record(services, &name, 0, None).await;
                    }
                } else {
                    destination.failures += 1;
                    let wait = backoff(destination.failures);
                    destination.retry_at = Some(Instant::now() + wait);
                    destination.pending = true;
                    tracing::info!(destination = %name, failures = destination.failures, retry_in_s = wait.as_secs(), "delivery failed");
                    record(services, &name, destination.failures, Some(wait)).await;
                }
                if !destination.pending && !destination.in_flight && destination.failures == 0 {
                    destinations.remove(&name);
                }
            }
            _ = tokio::time::sleep_until(next_retry.into()) => {}
            () = leader::deposed(leading) => return true,
        }
    }
}

/// The destinations with queued items (all pending) and their persisted backoff.
async fn load(svc: &Services) -> Result<HashMap<OwnedServerName, Destination>> {
    let mut destinations: HashMap<OwnedServerName, Destination> = HashMap::new();
    for name in storage::federation::queued_destinations(&svc.db).await? {
        if let Ok(name) = OwnedServerName::try_from(name) {
            destinations.entry(name).or_default().pending = true;
        }
    }
    let (now, now_instant) = (now_ms(), Instant::now());
    for (name, failures, retry_at_ts) in storage::federation::failing_destinations(&svc.db).await? {
        let Ok(name) = OwnedServerName::try_from(name) else { continue };
        let Some(destination) = destinations.get_mut(&name) else { continue };
        destination.failures = u32::try_from(failures).unwrap_or(u32::MAX);
        let wait = Duration::from_millis(u64::try_from(retry_at_ts - now).unwrap_or(0));
        destination.retry_at = Some(now_instant + wait);
        cluster::publish(svc, Message::FederationFailing { destination: name.clone(), failing: true }).await;
    }
    Ok(destinations)
}

/// Persists a destination's backoff (None: it is up), and tells every process whether the
/// destination is failing (any of them may be the one it contacts when it is back).
async fn record(services: &Weak<Services>, name: &ServerName, failures: u32, wait: Option<Duration>) {
    let Some(svc) = services.upgrade() else { return };
    cluster::publish(&svc, Message::FederationFailing { destination: name.to_owned(), failing: wait.is_some() }).await;
    let retry_at = now_ms() + wait.map_or(0, |w| w.as_millis() as i64);
    if let Err(e) = storage::federation::set_destination_state(&svc.db, name.as_str(), failures.into(), retry_at).await
    {
        tracing::warn!(destination = %name, error = %e, "cannot record the destination's state");
    }
}

/// Sends transactions until the destination's queue is empty (true) or one fails (false).
async fn deliver(
    services: Weak<Services>,
    name: OwnedServerName,
    done: mpsc::UnboundedSender<(OwnedServerName, bool)>,
) {
    let Some(svc) = services.upgrade() else { return };
    let delivered = loop {
        match send_transaction(&svc, &name).await {
            Ok(true) => continue,
            Ok(false) => break true,
            Err(e) => {
                tracing::warn!(destination = %name, error = %e, "transaction not delivered");
                break false;
            }
        }
    };
    drop(svc);
    let _ = done.send((name, delivered));
}

/// Sends the next batch of the queue; false when it was empty.
async fn send_transaction(svc: &Services, destination: &ServerName) -> anyhow::Result<bool> {
    let batch =
        storage::federation::next_batch(&svc.db, destination.as_str(), MAX_PDUS as i64, MAX_EDUS as i64).await?;
    if batch.is_empty() {
        return Ok(false);
    }
    let (mut pdus, mut edus) = (Vec::new(), Vec::new());
    for item in &batch {
        if let Some(event_id) = &item.event_id {
            match storage::events::get(&svc.db, event_id).await? {
                Some(event) => pdus.push(crate::rooms::pdu::federation_format(&event.json)?),
                None => tracing::warn!(%event_id, "queued PDU not found; dropped"),
            }
        } else if let Some(edu) = &item.edu_json {
            edus.push(serde_json::from_str::<Value>(edu)?);
        }
    }
    let ids: Vec<i64> = batch.iter().map(|item| item.id).collect();
    let txn_id = transaction_id(&ids);
    let body = json!({
        "origin": svc.config.server_name,
        "origin_server_ts": now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    let answer: Value = super::client::request(svc, destination, Method::PUT, &path, Some(&body)).await?;
    if let Some(results) = answer.get("pdus").and_then(Value::as_object) {
        for (event_id, result) in results.iter().filter(|(_, r)| r.get("error").is_some()) {
            tracing::info!(%destination, %event_id, error = %result["error"], "destination refused a PDU");
        }
    }
    storage::federation::dequeue(&svc.db, &ids).await?;
    Ok(true)
}

/// The same batch always gets the same ID (a retry after a lost answer is recognised by the
/// destination), and queue IDs are never reused, so another batch gets another ID.
fn transaction_id(ids: &[i64]) -> String {
    let mut hash = Sha256::new();
    for id in ids {
        hash.update(id.to_be_bytes());
    }
    hex::encode(&hash.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_limit() {
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(20), MAX_BACKOFF);
        assert_eq!(backoff(u32::MAX), MAX_BACKOFF);
    }

    #[test]
    fn transaction_ids_follow_the_batch() {
        assert_eq!(transaction_id(&[1, 2, 3]), transaction_id(&[1, 2, 3]));
        assert_ne!(transaction_id(&[1, 2, 3]), transaction_id(&[1, 2, 4]));
        assert_eq!(transaction_id(&[7]).len(), 32);
    }
}
