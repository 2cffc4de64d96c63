//! Delivery to push gateways (push gateway API, `POST /_matrix/push/v1/notify`). Pushes are
//! queued per pusher in the database, in the transaction that stores the notification or the
//! read receipt, so none is lost across a restart; each pusher's are sent one at a time, in
//! order. A gateway that fails is retried with exponential backoff (`[push]` config); a push
//! that still fails a day after it was queued is dropped, as Synapse does. A pushkey the
//! gateway rejects loses its pusher. The loop has the shape of the federation sender's (a
//! signal channel, per-target state, one delivery task in flight per target).

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::Context;
use ruma::api::client::push::{Pusher, PusherKind};
use ruma::api::push_gateway::send_event_notification::v1::{Device, Notification, NotificationPriority, PusherData};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::push::{Action, PushFormat};
use ruma::{OwnedEventId, SecondsSinceUnixEpoch, UInt, UserId};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::Services;
use crate::error::Result;
use crate::rooms;
use crate::storage::{self, Tx, now_ms, push::PusherRow, push::QueuedPush};

/// Pushes older than this are dropped instead of retried.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long a gateway may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The handle the rest of the server uses; the work is done by `run`.
pub struct Sender {
    /// Pushers given new pushes.
    signals: mpsc::UnboundedSender<i64>,
    receiver: Mutex<Option<mpsc::UnboundedReceiver<i64>>>,
    http: reqwest::Client,
}

impl Default for Sender {
    fn default() -> Self {
        let (signals, receiver) = mpsc::unbounded_channel();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Sender { signals, receiver: Mutex::new(Some(receiver)), http }
    }
}

/// Pushers given pushes in a transaction: wake them once it is committed.
#[must_use]
#[derive(Default)]
pub struct Queued(Vec<i64>);

impl Queued {
    pub fn wake(self, svc: &Services) {
        for pusher in self.0 {
            let _ = svc.push.gateway.signals.send(pusher);
        }
    }
}

/// Queues a push, for every pusher of the users it notified, of the event appended at `pos`
/// (its notifications are in `tx` already).
pub(super) async fn queue_notifications(tx: &mut Tx, pos: i64) -> Result<Queued> {
    Ok(Queued(storage::push::queue_notification_pushes(tx, pos, now_ms()).await?))
}

/// Queues a badge update (the user's unread count) for every pusher of the user.
pub async fn queue_badges(tx: &mut Tx, user: &UserId) -> Result<Queued> {
    Ok(Queued(storage::push::queue_badges(tx, user.as_str(), now_ms()).await?))
}

/// What the loop knows of a pusher.
#[derive(Default)]
struct PusherState {
    /// Pushes may be queued that no delivery has seen yet.
    pending: bool,
    in_flight: bool,
    failures: u32,
    retry_at: Option<Instant>,
}

impl PusherState {
    fn ready(&self, now: Instant) -> bool {
        self.pending && !self.in_flight && self.retry_at.is_none_or(|t| t <= now)
    }
}

fn backoff(config: &crate::config::PushConfig, failures: u32) -> Duration {
    let initial = Duration::from_millis(config.initial_backoff_ms);
    initial.saturating_mul(1 << failures.saturating_sub(1).min(20)).min(Duration::from_millis(config.max_backoff_ms))
}

/// The delivery loop, until the server is dropped. Holds only a weak reference so that a
/// stopped server (tests start many) goes away.
pub async fn run(services: Weak<Services>) {
    let (mut signals, mut pushers) = {
        let Some(svc) = services.upgrade() else { return };
        let Some(signals) = svc.push.gateway.receiver.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        match storage::push::queued_pushers(&svc.db).await {
            Ok(ids) => {
                let pushers: HashMap<i64, PusherState> =
                    ids.into_iter().map(|id| (id, PusherState { pending: true, ..Default::default() })).collect();
                (signals, pushers)
            }
            Err(e) => {
                tracing::error!(error = %e, "push gateway delivery: cannot load the queue; not pushing");
                return;
            }
        }
    };
    let (done_tx, mut done) = mpsc::unbounded_channel::<(i64, bool)>();
    loop {
        let now = Instant::now();
        for (id, pusher) in pushers.iter_mut().filter(|(_, p)| p.ready(now)) {
            pusher.pending = false;
            pusher.in_flight = true;
            tokio::spawn(deliver(services.clone(), *id, done_tx.clone()));
        }
        let next_retry = pushers
            .values()
            .filter(|p| p.pending && !p.in_flight)
            .filter_map(|p| p.retry_at)
            .min()
            .unwrap_or(now + Duration::from_secs(3600));
        tokio::select! {
            signal = signals.recv() => match signal {
                None => return,
                Some(id) => pushers.entry(id).or_default().pending = true,
            },
            Some((id, delivered)) = done.recv() => {
                let pusher = pushers.entry(id).or_default();
                pusher.in_flight = false;
                if delivered {
                    pusher.failures = 0;
                    pusher.retry_at = None;
                } else {
                    pusher.failures += 1;
                    let Some(svc) = services.upgrade() else { return };
                    let wait = backoff(&svc.config.push, pusher.failures);
                    pusher.retry_at = Some(Instant::now() + wait);
                    pusher.pending = true;
                    tracing::info!(pusher = id, failures = pusher.failures, retry_in_ms = wait.as_millis() as u64, "push not delivered");
                }
                if !pusher.pending && !pusher.in_flight {
                    pushers.remove(&id);
                }
            }
            _ = tokio::time::sleep_until(next_retry.into()) => {}
        }
    }
}

/// Sends the pusher's queued pushes until none is left (true) or one fails (false).
async fn deliver(services: Weak<Services>, id: i64, done: mpsc::UnboundedSender<(i64, bool)>) {
    let Some(svc) = services.upgrade() else { return };
    let delivered = loop {
        match deliver_next(&svc, id).await {
            Ok(true) => continue,
            Ok(false) => break true,
            Err(e) => {
                tracing::warn!(pusher = id, error = %e, "push not delivered");
                break false;
            }
        }
    };
    drop(svc);
    let _ = done.send((id, delivered));
}

/// Sends the pusher's oldest queued push; false when there was none (or no pusher).
async fn deliver_next(svc: &Services, id: i64) -> anyhow::Result<bool> {
    let Some(push) = storage::push::next_push(&svc.db, id).await? else { return Ok(false) };
    let Some(pusher) = storage::push::pusher(&svc.db, id).await? else { return Ok(false) };
    if let Err(e) = send(svc, &pusher, &push).await {
        if now_ms() - push.queued_ts < GIVE_UP_AFTER.as_millis() as i64 {
            return Err(e);
        }
        tracing::warn!(pusher = id, error = %e, "push failing for a day; dropped");
    }
    storage::push::dequeue_push(&svc.db, push.id).await?;
    Ok(true)
}

/// POSTs one push to the pusher's gateway, and removes the pusher if the gateway rejects
/// its pushkey.
async fn send(svc: &Services, row: &PusherRow, push: &QueuedPush) -> anyhow::Result<()> {
    // A later badge update carries a fresher count.
    if push.stream_pos.is_none() && storage::push::later_badge(&svc.db, row.id, push.id).await? {
        return Ok(());
    }
    let pusher: Pusher = serde_json::from_str(&row.pusher_json)?;
    let PusherKind::Http(data) = pusher.kind else { return Ok(()) };
    let url = data.url.clone();
    let Some(body) = notification(svc, row, push, data.into()).await? else { return Ok(()) };
    let response = svc.push.gateway.http.post(&url).json(&body).send().await?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "gateway answered {status}");
    let answer: Value = response.json().await.context("gateway answer is not JSON")?;
    let rejected = answer.get("rejected").and_then(Value::as_array).into_iter().flatten();
    if rejected.filter_map(Value::as_str).any(|key| key == row.pushkey) {
        tracing::info!(pusher = row.id, app_id = %row.app_id, "gateway rejected the pushkey; pusher removed");
        let mut tx = svc.db.begin().await?;
        storage::push::delete_pusher(&mut tx, &row.user_id, &row.app_id, &row.pushkey).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// The body of a notify request: a badge update (no event), or the notification of an event
/// with the fields the pusher's format asks for. None when the event is gone.
async fn notification(svc: &Services, row: &PusherRow, push: &QueuedPush, data: PusherData) -> Result<Option<Value>> {
    let mut device = Device::new(row.app_id.clone(), row.pushkey.clone());
    device.pushkey_ts = Some(SecondsSinceUnixEpoch(UInt::try_from(row.pushkey_ts / 1000).unwrap_or_default()));
    let event_id_only = matches!(data.format, Some(PushFormat::EventIdOnly));
    device.data = data;
    let Some(pos) = push.stream_pos else {
        let unread = storage::push::unread_total(&svc.db, &row.user_id, i64::MAX).await?;
        return Ok(Some(with_counts(Notification::new(vec![device]), unread, None)?));
    };
    let Some((_, event_id, actions)) = storage::push::notification(&svc.db, &row.user_id, pos).await? else {
        return Ok(None);
    };
    let Ok(event_id) = OwnedEventId::try_from(event_id) else { return Ok(None) };
    let Some(pdu) = rooms::get_pdu(svc, &event_id).await? else { return Ok(None) };
    let actions: Vec<Action> = serde_json::from_str(&actions).unwrap_or_default();
    device.tweaks = actions
        .iter()
        .filter_map(|a| match a {
            Action::SetTweak(tweak) => Some(tweak.clone()),
            _ => None,
        })
        .collect();
    // Synapse's rule: encrypted events (whose content the server cannot judge), highlights
    // and sounds are urgent.
    let urgent =
        pdu.kind == TimelineEventType::RoomEncrypted || actions.iter().any(|a| a.is_highlight() || a.sound().is_some());
    let prio = if urgent { NotificationPriority::High } else { NotificationPriority::Low };
    let unread = storage::push::unread_total(&svc.db, &row.user_id, pos).await?;

    let mut note = Notification::new(vec![device]);
    note.event_id = Some(pdu.event_id.clone());
    note.room_id = Some(pdu.room_id.clone());
    if !event_id_only {
        let state = rooms::current_state(svc, &pdu.room_id).await?;
        let state_content = async |kind: StateEventType, key: &str| -> Result<Option<Value>> {
            Ok(rooms::state_pdu(svc, &state, &kind, key).await?.map(|p| p.content_value()))
        };
        note.event_type = Some(pdu.kind.clone());
        note.sender = Some(pdu.sender.clone());
        note.sender_display_name = state_content(StateEventType::RoomMember, pdu.sender.as_str())
            .await?
            .and_then(|c| c.get("displayname")?.as_str().map(str::to_owned));
        note.room_name =
            state_content(StateEventType::RoomName, "").await?.and_then(|c| c.get("name")?.as_str().map(str::to_owned));
        note.room_alias = state_content(StateEventType::RoomCanonicalAlias, "")
            .await?
            .and_then(|c| c.get("alias")?.as_str()?.try_into().ok());
        note.user_is_target =
            pdu.kind == TimelineEventType::RoomMember && pdu.state_key.as_deref() == Some(&row.user_id);
        note.content = Some(pdu.content.clone());
    }
    Ok(Some(with_counts(note, unread, Some(prio))?))
}

/// The request body, with `counts.unread` (and `prio`) written out even at their defaults:
/// ruma leaves out an unread count of 0, but a gateway clears the app's badge only when
/// it is there (Sygnal), and Synapse always sends both.
fn with_counts(note: Notification, unread: i64, prio: Option<NotificationPriority>) -> Result<Value> {
    let mut note = serde_json::to_value(note).map_err(|e| crate::error::Error::Internal(e.into()))?;
    note["counts"] = json!({ "unread": unread });
    if let Some(prio) = prio {
        note["prio"] = json!(prio.as_str());
    }
    Ok(json!({ "notification": note }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PushConfig;

    #[test]
    fn backoff_doubles_up_to_the_limit() {
        let config = PushConfig { initial_backoff_ms: 1000, max_backoff_ms: 60_000 };
        assert_eq!(backoff(&config, 1), Duration::from_secs(1));
        assert_eq!(backoff(&config, 2), Duration::from_secs(2));
        assert_eq!(backoff(&config, 4), Duration::from_secs(8));
        assert_eq!(backoff(&config, 10), Duration::from_secs(60));
        assert_eq!(backoff(&config, u32::MAX), Duration::from_secs(60));
    }
}
