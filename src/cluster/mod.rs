//! Several Plexus processes on one PostgreSQL database (docs/scaling.md).
//!
//! What one process changes in memory and the others must learn of (wake-ups, cache
//! invalidations, typing, signals to the background jobs) is a `Message`. `publish` applies
//! it here and announces it with PostgreSQL `NOTIFY`; every process `LISTEN`s and applies
//! the others' messages with the same `apply`. Typing changes are announced in the order of
//! their serials and applied on receipt everywhere, the announcing process included, so that
//! every process numbers them alike. On SQLite one process owns the database: publishing
//! only applies.
//!
//! Background jobs (the federation sender, the outboxes) run on one process at a time: see
//! `leader`.

pub mod leader;

use std::sync::{Mutex, Weak};
use std::time::Duration;

use rand::Rng;
use ruma::{OwnedEventId, OwnedRoomId, OwnedServerName, OwnedUserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::Services;
use crate::storage::{self, Db, DbKind};

/// Largest `NOTIFY` payload sent (PostgreSQL refuses 8000 bytes and more).
const MAX_PAYLOAD: usize = 7_000;

/// How long a typing request waits for its own announcement to come back.
const TYPING_APPLIED_WAIT: Duration = Duration::from_secs(2);

/// How long the listener waits before it connects again after an error.
const LISTEN_RETRY: Duration = Duration::from_secs(1);

/// A change other processes must apply.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "m", rename_all = "snake_case")]
pub enum Message {
    /// Something new was committed for these users: wake their long-polls.
    Wake { users: Vec<OwnedUserId> },
    /// Items were queued for a federation destination.
    FederationQueued { destination: OwnedServerName },
    /// A destination in backoff reached us: the sender retries it at once.
    FederationUp { destination: OwnedServerName },
    /// The sender put a destination in backoff, or took it out.
    FederationFailing { destination: OwnedServerName, failing: bool },
    /// Work was queued for an outbox target (`kind`: `outbox::Target::KIND`).
    Outbox { kind: String, target: Value },
    /// A user starts (`until_ms` set) or stops typing; `serial` orders the changes.
    Typing { serial: u64, room: OwnedRoomId, user: OwnedUserId, until_ms: Option<i64> },
    /// An event changed (redacted): drop it from the event cache.
    EventChanged { event_id: OwnedEventId },
    /// A user's push rules changed.
    PushRulesChanged { user: OwnedUserId },
    /// A user's presence changed: drop what is known of it here.
    PresenceChanged { user: OwnedUserId },
    /// A room's history was purged: recently appended events may be gone from the timeline.
    HistoryPurged,
    /// A user's access tokens, devices or account flags changed: drop their cached tokens.
    TokensChanged { user: OwnedUserId },
    /// A user's one-time or fallback keys changed, or one of their device IDs is new: drop
    /// their devices' cached key status.
    KeysChanged { user: OwnedUserId },
    /// A room's head (extremities, current state, members) changed: drop it from memory.
    RoomHeadChanged { room: OwnedRoomId },
    /// A user was erased, or the erasure undone (reactivation).
    Erased { user: OwnedUserId, erased: bool },
    /// A device starts lazy-loading members afresh (an initial sync).
    LazyLoadReset { user: OwnedUserId, device: String },
    /// A refreshed session: its old refresh token is revoked when the new access token is used.
    RefreshSuperseded { user: OwnedUserId, device: String, new_access_hash: String, old_refresh_hash: String },
}

/// What goes over the wire: the sending process and its messages.
#[derive(Serialize, Deserialize)]
struct Envelope {
    from: String,
    messages: Vec<Message>,
}

/// Sends messages to the other processes (a no-op on SQLite). Cheap to clone.
#[derive(Clone, Default)]
pub struct Publisher(Option<mpsc::UnboundedSender<Message>>);

impl Publisher {
    /// Queues a message for the other processes (sent in the background, in order).
    pub fn send(&self, message: Message) {
        if let Some(outgoing) = &self.0 {
            let _ = outgoing.send(message);
        }
    }

    /// Whether other processes may exist (PostgreSQL).
    pub fn is_shared(&self) -> bool {
        self.0.is_some()
    }
}

pub struct Cluster {
    /// This process, so that it skips its own announcements.
    instance: String,
    publisher: Publisher,
    /// Taken by the sending task when the server starts.
    outgoing: Mutex<Option<mpsc::UnboundedReceiver<Message>>>,
    leadership: leader::Leadership,
    database_url: String,
    /// Dropped with the server: the listener then stops (its only cancelled wait).
    alive: tokio::sync::watch::Sender<()>,
}

impl Cluster {
    /// The cluster of the processes sharing `db` (just this one on SQLite).
    pub fn new(db: &Db, database_url: &str) -> Self {
        let instance: String =
            rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(16).map(char::from).collect();
        let (publisher, outgoing, leadership) = match db.kind {
            DbKind::Sqlite => (Publisher(None), None, leader::Leadership::alone()),
            DbKind::Postgres => {
                let (tx, rx) = mpsc::unbounded_channel();
                (Publisher(Some(tx)), Some(rx), leader::Leadership::elect(database_url))
            }
        };
        Cluster {
            instance,
            publisher,
            outgoing: Mutex::new(outgoing),
            leadership,
            database_url: database_url.to_owned(),
            alive: tokio::sync::watch::Sender::new(()),
        }
    }

    pub fn publisher(&self) -> Publisher {
        self.publisher.clone()
    }

    /// Whether this process runs the background jobs now, and its changes.
    pub fn leader(&self) -> tokio::sync::watch::Receiver<bool> {
        self.leadership.receiver()
    }

    /// Whether this process leads now: periodic jobs of the whole deployment run only where
    /// this holds when they are due.
    pub fn leads(&self) -> bool {
        *self.leadership.receiver().borrow()
    }

    /// Starts sending this process's messages and listening to the others' (PostgreSQL).
    pub fn start(&self, services: Weak<Services>, db: Db) {
        let Some(outgoing) = self.outgoing.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        tokio::spawn(send_loop(db, self.instance.clone(), outgoing));
        let alive = self.alive.subscribe();
        tokio::spawn(listen_loop(services, self.database_url.clone(), self.instance.clone(), alive));
    }
}

/// Applies a change here and announces it to the other processes.
pub async fn publish(svc: &Services, message: Message) {
    apply(svc, &message, true).await;
    svc.cluster.publisher.send(message);
}

/// A typing change: applied at once on SQLite; on PostgreSQL it takes the next shared serial
/// and is applied by every process, this one included, when its announcement arrives.
pub async fn publish_typing(
    svc: &Services,
    room: OwnedRoomId,
    user: OwnedUserId,
    until_ms: Option<i64>,
) -> crate::error::Result<()> {
    if !svc.cluster.publisher.is_shared() {
        return crate::rooms::typing::apply(svc, None, &room, &user, until_ms, true).await;
    }
    let from = svc.cluster.instance.clone();
    let serial = storage::cluster::notify_in_order(&svc.db, crate::rooms::typing::SERIAL_COUNTER, |serial| {
        let message = Message::Typing { serial: serial as u64, room, user, until_ms };
        serde_json::to_string(&Envelope { from, messages: vec![message] }).unwrap_or_default()
    })
    .await?;
    // The change is visible to this process's next request once it is answered.
    svc.typing.applied(serial as u64, TYPING_APPLIED_WAIT).await;
    Ok(())
}

/// The local effect of a message; `own`: it comes from this process.
async fn apply(svc: &Services, message: &Message, own: bool) {
    match message {
        Message::Wake { users } => svc.notifier.wake_local(users.iter().map(|u| &**u)),
        Message::FederationQueued { destination } => svc.federation.sender.signal_queued(destination),
        Message::FederationUp { destination } => svc.federation.sender.signal_up(destination),
        Message::FederationFailing { destination, failing } => svc.federation.sender.set_failing(destination, *failing),
        Message::Outbox { kind, target } => signal_outbox(svc, kind, target),
        Message::Typing { serial, room, user, until_ms } => {
            if let Err(e) = crate::rooms::typing::apply(svc, Some(*serial), room, user, *until_ms, own).await {
                tracing::warn!(%room, %user, error = %e, "cannot apply a typing change");
            }
        }
        Message::EventChanged { event_id } => svc.rooms.forget_event(event_id),
        Message::PushRulesChanged { user } => svc.push.forget(user),
        Message::PresenceChanged { user } => svc.presence.forget(user),
        Message::HistoryPurged => svc.notifier.recent.clear(),
        Message::TokensChanged { user } => svc.token_cache.forget_user_here(user),
        Message::KeysChanged { user } => svc.key_status.forget_user_here(user),
        Message::RoomHeadChanged { room } => crate::rooms::head::forget_here(svc, room),
        Message::Erased { user, erased: true } => svc.erased_users.insert(user),
        Message::Erased { user, erased: false } => svc.erased_users.remove(user),
        Message::LazyLoadReset { user, device } => svc.lazy_load.reset(user.as_str(), device),
        Message::RefreshSuperseded { user, device, new_access_hash, old_refresh_hash } => {
            svc.sessions.supersede_here(user, device, new_access_hash.clone(), old_refresh_hash.clone())
        }
    }
}

/// Wakes this process's delivery loop of an outbox target another process queued work for.
fn signal_outbox(svc: &Services, kind: &str, target: &Value) {
    use crate::appservice::AppserviceId;
    use crate::outbox::{Target, signal};
    use crate::push::gateway::PusherId;
    let signalled = match kind {
        PusherId::KIND => serde_json::from_value(target.clone()).map(|t| signal::<PusherId>(svc, t)),
        AppserviceId::KIND => serde_json::from_value(target.clone()).map(|t| signal::<AppserviceId>(svc, t)),
        _ => {
            tracing::warn!(kind, "announcement for an unknown kind of outbox");
            return;
        }
    };
    if let Err(e) = signalled {
        tracing::warn!(kind, error = %e, "unreadable outbox announcement");
    }
}

/// Sends queued messages, as many as fit in each `NOTIFY`, until the server is gone.
async fn send_loop(db: Db, instance: String, mut outgoing: mpsc::UnboundedReceiver<Message>) {
    let mut batch = Vec::new();
    while outgoing.recv_many(&mut batch, 256).await > 0 {
        for payload in payloads(&instance, batch.drain(..)) {
            if let Err(e) = storage::cluster::notify(&db, &payload).await {
                tracing::warn!(error = %e, "cannot announce a change to the other processes");
            }
        }
    }
}

/// Packs messages into payloads under `MAX_PAYLOAD` bytes; a wake-up of more users than fit
/// in one is split.
fn payloads(instance: &str, messages: impl IntoIterator<Item = Message>) -> Vec<String> {
    let encode = |messages: Vec<Message>| {
        serde_json::to_string(&Envelope { from: instance.to_owned(), messages }).unwrap_or_default()
    };
    let mut out = Vec::new();
    let mut current: Vec<Message> = Vec::new();
    let mut size = 0;
    for message in messages.into_iter().flat_map(split) {
        let len = serde_json::to_string(&message).map_or(0, |s| s.len()) + 1;
        if size + len > MAX_PAYLOAD - instance.len() - 32 && !current.is_empty() {
            out.push(encode(std::mem::take(&mut current)));
            size = 0;
        }
        size += len;
        current.push(message);
    }
    if !current.is_empty() {
        out.push(encode(current));
    }
    out
}

/// A wake-up split into parts small enough for one payload each.
fn split(message: Message) -> Vec<Message> {
    match message {
        Message::Wake { users } => {
            let mut parts = Vec::new();
            let mut part = Vec::new();
            let mut size = 0;
            for user in users {
                size += user.as_str().len() + 3;
                if size > MAX_PAYLOAD / 2 && !part.is_empty() {
                    parts.push(Message::Wake { users: std::mem::take(&mut part) });
                    size = user.as_str().len() + 3;
                }
                part.push(user);
            }
            parts.push(Message::Wake { users: part });
            parts
        }
        other => vec![other],
    }
}

/// Applies the other processes' messages until the server is gone. When the connection is
/// lost, what was announced meanwhile is lost too: everything that may be stale is dropped
/// and every long-poll woken.
async fn listen_loop(
    services: Weak<Services>,
    url: String,
    instance: String,
    mut alive: tokio::sync::watch::Receiver<()>,
) {
    let mut listener = loop {
        match connect_listener(&url).await {
            Ok(listener) => break listener,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to the other processes; retrying");
                if services.strong_count() == 0 {
                    return;
                }
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    };
    loop {
        let received = tokio::select! {
            received = listener.try_recv() => received,
            _ = alive.changed() => return,
        };
        let Some(svc) = services.upgrade() else { return };
        match received {
            Ok(Some(notification)) => match serde_json::from_str::<Envelope>(notification.payload()) {
                Ok(envelope) => {
                    let own = envelope.from == instance;
                    for message in &envelope.messages {
                        // Typing changes are applied on receipt by their sender too.
                        if !own || matches!(message, Message::Typing { .. }) {
                            apply(&svc, message, own).await;
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "unreadable announcement from another process"),
            },
            Ok(None) => {
                tracing::warn!("lost the connection to the other processes; reconnecting");
                resynchronise(&svc).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen to the other processes; retrying");
                drop(svc);
                tokio::time::sleep(LISTEN_RETRY).await;
            }
        }
    }
}

async fn connect_listener(url: &str) -> sqlx::Result<sqlx::postgres::PgListener> {
    let mut listener = sqlx::postgres::PgListener::connect(url).await?;
    listener.listen(storage::cluster::CHANNEL).await?;
    Ok(listener)
}

/// After announcements may have been missed: drop the caches other processes invalidate and
/// wake every long-poll, so that each looks at the database again.
async fn resynchronise(svc: &Services) {
    svc.rooms.forget_all_events();
    svc.notifier.recent.clear();
    crate::rooms::head::forget_all(svc);
    svc.token_cache.forget_all();
    svc.key_status.forget_all();
    svc.push.forget_all();
    svc.presence.forget_all();
    svc.lazy_load.reset_all();
    match crate::rooms::visibility::ErasedUsers::load(&svc.db).await {
        Ok(erased) => svc.erased_users.replace(erased),
        Err(e) => tracing::warn!(error = %e, "cannot reload the erased users"),
    }
    svc.notifier.wake_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_wake_ups_are_split_under_the_payload_limit() {
        let users: Vec<OwnedUserId> =
            (0..2_000).map(|i| OwnedUserId::try_from(format!("@user{i}:example.org")).unwrap()).collect();
        let typing = Message::EventChanged { event_id: OwnedEventId::try_from("$e:x").unwrap() };
        let payloads = payloads("abc", [Message::Wake { users: users.clone() }, typing]);
        assert!(payloads.len() > 1);
        let mut woken = Vec::new();
        let mut others = 0;
        for payload in &payloads {
            assert!(payload.len() < MAX_PAYLOAD, "{}", payload.len());
            let envelope: Envelope = serde_json::from_str(payload).unwrap();
            assert_eq!(envelope.from, "abc");
            for message in envelope.messages {
                match message {
                    Message::Wake { users } => woken.extend(users),
                    _ => others += 1,
                }
            }
        }
        assert_eq!(woken, users);
        assert_eq!(others, 1);
    }
}
