//! Delivery to push gateways (push gateway API, `POST /_matrix/push/v1/notify`). Pushes are
//! queued per pusher in the database, in the transaction that stores the notification or the
//! read receipt, so none is lost across a restart; each pusher's are sent one at a time, in
//! order. A gateway that fails is retried with exponential backoff (`[push]` config); a push
//! that still fails a day after it was queued is dropped, as Synapse does. A pushkey the
//! gateway rejects loses its pusher. The loop is `outbox::run`.

use std::time::Duration;

use anyhow::Context;
use ruma::api::client::push::{Pusher, PusherKind};
use ruma::api::push_gateway::send_event_notification::v1::{Device, Notification, NotificationPriority, PusherData};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::push::{Action, PushFormat};
use ruma::{OwnedEventId, SecondsSinceUnixEpoch, UInt, UserId};
use serde_json::{Value, json};

use crate::Services;
use crate::error::Result;
use crate::outbox::{self, Outbox, Target};
use crate::rooms;
use crate::storage::{self, Tx, now_ms, push::PusherRow, push::QueuedPush};

/// Pushes older than this are dropped instead of retried.
const GIVE_UP_AFTER: Duration = Duration::from_secs(24 * 3600);
/// How long a gateway may take to answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// The handle the rest of the server uses; the work is done by `outbox::run`.
pub struct Sender {
    outbox: Outbox<PusherId>,
    http: reqwest::Client,
}

impl Default for Sender {
    fn default() -> Self {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Sender { outbox: Outbox::default(), http }
    }
}

/// Pushers given pushes in a transaction: wake them once it is committed.
#[must_use]
#[derive(Default)]
pub struct Queued(Vec<i64>);

impl Queued {
    pub fn wake(self, svc: &Services) {
        for pusher in self.0 {
            outbox::wake(svc, PusherId(pusher));
        }
    }
}

/// Wakes pushers with pushes queued (and committed).
pub(super) fn wake_all(svc: &Services, pushers: Vec<i64>) {
    Queued(pushers).wake(svc);
}

/// Queues a badge update (the user's unread count) for every pusher of the user.
pub async fn queue_badges(tx: &mut Tx, user: &UserId) -> Result<Queued> {
    Ok(Queued(storage::push::queue_badges(tx, user.as_str(), now_ms()).await?))
}

/// A pusher, as a delivery target.
#[derive(Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct PusherId(i64);

impl std::fmt::Display for PusherId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pusher {}", self.0)
    }
}

impl Target for PusherId {
    const KIND: &'static str = "pusher";

    fn outbox(svc: &Services) -> &Outbox<Self> {
        &svc.push.gateway.outbox
    }

    async fn queued(svc: &Services) -> anyhow::Result<Vec<Self>> {
        Ok(storage::push::queued_pushers(&svc.db).await?.into_iter().map(PusherId).collect())
    }

    fn backoff(svc: &Services, failures: u32) -> Duration {
        outbox::backoff(svc.config.push.initial_backoff_ms, svc.config.push.max_backoff_ms, failures)
    }

    async fn deliver_next(&self, svc: &Services) -> anyhow::Result<bool> {
        deliver_next(svc, self.0).await
    }
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
