//! The delivery loop shared by the senders that push queued work to HTTP endpoints (push
//! gateways, application services): the work is queued in the database by its producers,
//! a signal wakes the loop, each target has one delivery task in flight at a time that sends
//! its queue in order, and a target that fails is retried with exponential backoff.
//! With several processes on one database, the loop runs on the leader only (see
//! `cluster::leader`); the others announce the targets they queued work for.

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::hash::Hash;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::Services;
use crate::cluster::{Message, leader};

/// Something work is delivered to, with its queue in the database.
pub trait Target:
    Clone + Eq + Hash + Display + Send + Sync + serde::Serialize + serde::de::DeserializeOwned + 'static
{
    /// The name of this kind of target in the announcements to other processes.
    const KIND: &'static str;
    /// The signal channel of this kind of target.
    fn outbox(svc: &Services) -> &Outbox<Self>;
    /// Targets with queued work (at start).
    fn queued(svc: &Services) -> impl Future<Output = anyhow::Result<Vec<Self>>> + Send;
    /// The wait before retrying after `failures` failures in a row.
    fn backoff(svc: &Services, failures: u32) -> Duration;
    /// Sends the oldest queued work; false when there was none.
    fn deliver_next(&self, svc: &Services) -> impl Future<Output = anyhow::Result<bool>> + Send;
}

/// The signal channel: producers wake targets once their queued work is committed.
pub struct Outbox<T> {
    signals: mpsc::UnboundedSender<T>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<T>>>,
}

impl<T> Default for Outbox<T> {
    fn default() -> Self {
        let (signals, receiver) = mpsc::unbounded_channel();
        Outbox { signals, receiver: Mutex::new(Some(receiver)) }
    }
}

/// Wakes the delivery of a target once work queued for it is committed, in whichever
/// process runs the loop.
pub fn wake<T: Target>(svc: &Services, target: T) {
    match serde_json::to_value(&target) {
        Ok(value) => svc.cluster.publisher().send(Message::Outbox { kind: T::KIND.to_owned(), target: value }),
        Err(e) => tracing::warn!(%target, error = %e, "cannot announce queued work"),
    }
    signal(svc, target);
}

/// Wakes this process's loop for a target (announced by another process, or queued here).
pub fn signal<T: Target>(svc: &Services, target: T) {
    let _ = T::outbox(svc).signals.send(target);
}

/// `initial` doubled per failure after the first, at most `max`.
pub fn backoff(initial_ms: u64, max_ms: u64, failures: u32) -> Duration {
    let initial = Duration::from_millis(initial_ms);
    initial.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(Duration::from_millis(max_ms))
}

/// What the loop knows of a target.
#[derive(Default)]
struct TargetState {
    /// Work may be queued that no delivery has seen yet.
    pending: bool,
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl TargetState {
    fn ready(&self, now: Instant) -> bool {
        self.pending && !self.in_flight && self.retry_at.is_none_or(|t| t <= now)
    }
}

/// The delivery loop, until the server is dropped, while this process leads. Holds only a
/// weak reference so that a stopped server (tests start many) goes away.
pub async fn run<T: Target>(services: Weak<Services>) {
    let kind = std::any::type_name::<T>();
    let (mut signals, mut leading) = {
        let Some(svc) = services.upgrade() else { return };
        let Some(signals) = T::outbox(&svc).receiver.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        (signals, svc.cluster.leader())
    };
    while leader::until_leading(&mut leading, &mut signals).await {
        let targets = {
            let Some(svc) = services.upgrade() else { return };
            match T::queued(&svc).await {
                Ok(queued) => queued
                    .into_iter()
                    .map(|t| (t, TargetState { pending: true, ..Default::default() }))
                    .collect::<HashMap<T, TargetState>>(),
                Err(e) => {
                    tracing::error!(error = %e, kind, "delivery: cannot load the queue; not delivering");
                    return;
                }
            }
        };
        if !deliver_while_leading(&services, &mut signals, &mut leading, targets).await {
            return;
        }
    }
}

/// Delivers what is queued and signalled until this process stops leading (true) or the
/// server is gone (false).
async fn deliver_while_leading<T: Target>(
    services: &Weak<Services>,
    signals: &mut mpsc::UnboundedReceiver<T>,
    leading: &mut tokio::sync::watch::Receiver<bool>,
    mut targets: HashMap<T, TargetState>,
) -> bool {
    let kind = std::any::type_name::<T>();
    let (done_tx, mut done) = mpsc::unbounded_channel::<(T, bool)>();
    loop {
        let now = Instant::now();
        for (target, state) in targets.iter_mut().filter(|(_, s)| s.ready(now)) {
            state.pending = false;
            state.in_flight = true;
            tokio::spawn(deliver(services.clone(), target.clone(), done_tx.clone()));
        }
        let next_retry = targets
            .values()
            .filter(|s| s.pending && !s.in_flight)
            .filter_map(|s| s.retry_at)
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            signal = signals.recv() => match signal {
                None => return false,
                Some(target) => targets.entry(target).or_default().pending = true,
            },
            Some((target, delivered)) = done.recv() => {
                let state = targets.entry(target.clone()).or_default();
                state.in_flight = false;
                if delivered {
                    state.failures = 0;
                    state.retry_at = None;
                } else {
                    state.failures += 1;
                    let Some(svc) = services.upgrade() else { return false };
                    let wait = T::backoff(&svc, state.failures);
                    state.retry_at = Some(Instant::now() + wait);
                    state.pending = true;
                    tracing::info!(%target, kind, failures = state.failures, retry_in_ms = wait.as_millis() as u64, "not delivered");
                }
                if !state.pending && !state.in_flight {
                    targets.remove(&target);
                }
            }
            _ = tokio::time::sleep_until(next_retry.into()) => {}
            () = leader::deposed(leading) => return true,
        }
    }
}

/// Sends the target's queued work until none is left (true) or a send fails (false).
async fn deliver<T: Target>(services: Weak<Services>, target: T, done: mpsc::UnboundedSender<(T, bool)>) {
    let Some(svc) = services.upgrade() else { return };
    let delivered = loop {
        match target.deliver_next(&svc).await {
            Ok(true) => continue,
            Ok(false) => break true,
            Err(e) => {
                tracing::warn!(%target, error = %e, "not delivered");
                break false;
            }
        }
    };
    drop(svc);
    let _ = done.send((target, delivered));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        assert_eq!(backoff(1000, 60_000, 1), Duration::from_secs(1));
        assert_eq!(backoff(1000, 60_000, 2), Duration::from_secs(2));
        assert_eq!(backoff(1000, 60_000, 4), Duration::from_secs(8));
        assert_eq!(backoff(1000, 60_000, 10), Duration::from_secs(60));
        assert_eq!(backoff(1000, 60_000, u32::MAX), Duration::from_secs(60));
    }
}
