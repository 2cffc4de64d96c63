//! Presence of our users: stored, shown to the users sharing a room with them, and sent to
//! the other servers in those rooms (`m.presence`).
//!
//! Set by `PUT /presence` and, as in Synapse, by `/sync` (`set_presence`, default `online`;
//! `offline` leaves presence alone). A user whose syncs stop goes `offline` `offline_after`
//! (30 s) later, and an online user without activity for `idle_after` (5 minutes) becomes
//! `unavailable`. The state lives in the database, shared by every process; `/sync`, the
//! hottest path, writes only when the state changes: each process remembers whom it is
//! serving syncs, and a heartbeat records them all in one statement every `tick`. The
//! timers run on the leader only, as conditional updates that lose to any activity meanwhile.

use std::collections::HashMap;
use std::sync::{Mutex, Weak};
use std::time::Duration;

use ruma::{OwnedUserId, UserId};
use serde_json::json;

use crate::Services;
use crate::cluster::{self, Message};
use crate::config::PresenceConfig;
use crate::error::{Error, Result};
use crate::federation::sender;
use crate::rooms;
use crate::storage::{self, presence::CURRENTLY_ACTIVE_MS, presence::Timing};

/// Values of `set_presence` and `PUT /presence`.
pub const STATES: [&str; 3] = ["online", "unavailable", "offline"];

/// The syncs of this process that set presence, by user.
pub struct Tracker {
    config: PresenceConfig,
    users: Mutex<HashMap<OwnedUserId, Syncing>>,
    /// When the leader last sent each local user's presence to other servers unasked.
    sent_again: Mutex<HashMap<OwnedUserId, i64>>,
}

#[derive(Default)]
struct Syncing {
    /// Syncs running now.
    running: u32,
    /// A sync ran since the last heartbeat.
    since_heartbeat: bool,
    /// The latest asked for `online`, which counts as activity (as in Synapse).
    online: bool,
    /// The stored state as last known here; None when another process may have changed it.
    known: Option<Timing>,
}

impl Tracker {
    pub fn new(config: &PresenceConfig) -> Self {
        Tracker { config: config.clone(), users: Mutex::default(), sent_again: Mutex::default() }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// How often the heartbeat and the timers run: often enough that a user still syncing is
    /// never taken for gone.
    fn tick(&self) -> Duration {
        let shortest =
            self.config.offline_after.0.min(self.config.idle_after.0).min(self.config.remote_offline_after.0);
        Duration::from_millis((shortest / 6).max(100))
    }

    fn users(&self) -> std::sync::MutexGuard<'_, HashMap<OwnedUserId, Syncing>> {
        self.users.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets what this process knew of a user's state, changed elsewhere.
    pub(crate) fn forget(&self, user: &UserId) {
        if let Some(syncing) = self.users().get_mut(user) {
            syncing.known = None;
        }
    }

    pub(crate) fn forget_all(&self) {
        self.users().values_mut().for_each(|s| s.known = None);
    }

    /// The users synced since the last heartbeat (or syncing now), online or not; those
    /// neither drop out.
    fn heartbeat(&self, now: i64) -> (Vec<String>, Vec<String>) {
        let mut users = self.users();
        users.retain(|_, s| s.running > 0 || s.since_heartbeat);
        let (mut online, mut other) = (Vec::new(), Vec::new());
        for (user, syncing) in users.iter_mut() {
            syncing.since_heartbeat = false;
            if let Some(known) = &mut syncing.known {
                known.last_sync_ts = now;
                if syncing.online {
                    known.last_active_ts = now;
                }
            }
            let group = if syncing.online { &mut online } else { &mut other };
            group.push(user.to_string());
        }
        (online, other)
    }
}

/// A sync setting presence, counted while it runs.
pub struct SyncGuard<'a> {
    tracker: &'a Tracker,
    user: OwnedUserId,
}

impl Drop for SyncGuard<'_> {
    fn drop(&mut self) {
        if let Some(syncing) = self.tracker.users().get_mut(&self.user) {
            syncing.running = syncing.running.saturating_sub(1);
            syncing.since_heartbeat = true;
        }
    }
}

/// A sync starts with `set_presence` (default `online`): the user becomes online or
/// unavailable if not already, and counts as syncing while the guard lives. `offline`, or
/// presence turned off: nothing happens.
pub async fn syncing<'a>(
    svc: &'a Services,
    user: &UserId,
    set_presence: Option<&str>,
) -> Result<Option<SyncGuard<'a>>> {
    let wanted = set_presence.unwrap_or("online");
    if !STATES.contains(&wanted) {
        return Err(Error::invalid_param(format!("Invalid set_presence {wanted:?}")));
    }
    let tracker = &svc.presence;
    if !tracker.enabled() || wanted == "offline" {
        return Ok(None);
    }
    let active = wanted == "online";
    let known = {
        let mut users = tracker.users();
        let syncing = users.entry(user.to_owned()).or_default();
        syncing.running += 1;
        syncing.since_heartbeat = true;
        syncing.online = active;
        syncing.known.clone()
    };
    let guard = SyncGuard { tracker, user: user.to_owned() };
    let now = storage::now_ms();
    let mut known = match known {
        Some(known) => known,
        None => storage::presence::timing(&svc.db, user.as_str()).await?.unwrap_or(Timing {
            user_id: user.to_string(),
            state: "offline".into(),
            last_active_ts: 0,
            last_sync_ts: 0,
        }),
    };
    // Becoming currently active again is a change others see, as is the state.
    let changed = known.state != wanted || (active && now - known.last_active_ts >= CURRENTLY_ACTIVE_MS);
    if changed {
        let mut tx = svc.db.begin().await?;
        storage::presence::set_by_sync(&mut tx, user.as_str(), wanted, active, now).await?;
        tx.commit().await?;
        announce(svc, user).await?;
        known.state = wanted.to_owned();
        known.last_sync_ts = now;
        if active {
            known.last_active_ts = now;
        }
    } else if known.last_sync_ts.max(known.last_active_ts) < now - tracker.config.offline_after.0 as i64 / 2 {
        // The heartbeat may come too late for the timers, which another process may run.
        storage::presence::touch(&svc.db, &[user.to_string()], active, now).await?;
        known.last_sync_ts = now;
        if active {
            known.last_active_ts = now;
        }
    }
    if let Some(syncing) = tracker.users().get_mut(user) {
        syncing.known = Some(known);
    }
    Ok(Some(guard))
}

/// Sets `user`'s presence (`state`: online, unavailable or offline), active now
/// (`PUT /presence`). Nothing happens when presence is off (as in Synapse).
pub async fn set(svc: &Services, user: &UserId, state: &str, status_msg: Option<&str>) -> Result<()> {
    if !svc.presence.enabled() {
        return Ok(());
    }
    let now = storage::now_ms();
    let mut tx = svc.db.begin().await?;
    storage::presence::set(&mut tx, user.as_str(), state, status_msg, now, None).await?;
    tx.commit().await?;
    announce(svc, user).await
}

/// Tells every process, the users who share a room with `user` (through their syncs) and
/// the servers in those rooms of the user's stored presence, just changed.
async fn announce(svc: &Services, user: &UserId) -> Result<()> {
    wake_watchers(svc, user).await?;
    send_to_servers(svc, user).await
}

/// Tells every process and the local users who share a room with `user` (through their
/// syncs) that the user's stored presence changed.
async fn wake_watchers(svc: &Services, user: &UserId) -> Result<()> {
    cluster::publish(svc, Message::PresenceChanged { user: user.to_owned() }).await;
    let watchers: Vec<OwnedUserId> = storage::rooms::users_sharing_rooms(&svc.db, user.as_str())
        .await?
        .into_iter()
        .filter_map(|u| OwnedUserId::try_from(u).ok())
        .chain([user.to_owned()])
        .collect();
    svc.notifier.notify(watchers.iter().map(|u| &**u));
    Ok(())
}

/// Sends a local user's stored presence to the servers sharing a room with them.
async fn send_to_servers(svc: &Services, user: &UserId) -> Result<()> {
    let servers = rooms::servers_sharing_rooms_with(svc, user).await?;
    if servers.is_empty() {
        return Ok(());
    }
    let Some(presence) = storage::presence::get(&svc.db, user.as_str()).await? else { return Ok(()) };
    let mut update = presence.content(storage::now_ms());
    update["user_id"] = json!(user);
    sender::send_edu(svc, servers.iter().map(|s| &**s), "m.presence", json!({ "push": [update] })).await
}

/// Every `tick` while the server lives: records the users this process serves syncs to, and,
/// on the leader, runs the timers. Started in `AppState::build`.
pub async fn run(services: Weak<Services>) {
    let Some(tick) = services.upgrade().filter(|s| s.presence.enabled()).map(|s| s.presence.tick()) else { return };
    let mut ticks = tokio::time::interval(tick);
    loop {
        ticks.tick().await;
        let Some(svc) = services.upgrade() else { return };
        let now = storage::now_ms();
        let (online, other) = svc.presence.heartbeat(now);
        for (users, active) in [(online, true), (other, false)] {
            if let Err(e) = storage::presence::touch(&svc.db, &users, active, now).await {
                tracing::warn!(error = %e, "cannot record who is syncing");
            }
        }
        if svc.cluster.leads() {
            for (timer, outcome) in [
                ("local", time_out(&svc, now).await),
                ("remote", time_out_remote(&svc, now).await),
                ("federation", send_again(&svc, now).await),
            ] {
                if let Err(e) = outcome {
                    tracing::warn!(error = %e, timer, "presence timers failed");
                }
            }
        }
    }
}

/// Remote users whose server said nothing of them for `remote_offline_after` go offline here
/// (as Synapse's `handle_timeout` for other servers' users).
async fn time_out_remote(svc: &Services, now: i64) -> Result<()> {
    let since = now - svc.config.presence.remote_offline_after.0 as i64;
    let suffix = format!(":{}", svc.config.server_name);
    for unheard in storage::presence::unheard_since(&svc.db, &suffix, since).await? {
        let mut tx = svc.db.begin().await?;
        let user = unheard.user_id.as_str();
        if storage::presence::time_out(&mut tx, user, &unheard.state, "offline", since, true).await?.is_none() {
            // Heard of meanwhile: the change's position goes back.
            tx.rollback().await?;
            continue;
        }
        tx.commit().await?;
        let Ok(user) = UserId::parse(user) else { continue };
        wake_watchers(svc, &user).await?;
    }
    Ok(())
}

/// Sends the presence of local users who are not offline to the servers sharing their rooms
/// again when it was last sent unasked five sixths of `remote_offline_after` ago, so that
/// those servers, which time remote users out as `time_out_remote` does, keep them.
async fn send_again(svc: &Services, now: i64) -> Result<()> {
    let every = (svc.config.presence.remote_offline_after.0 as i64) * 5 / 6;
    let suffix = format!(":{}", svc.config.server_name);
    for present in storage::presence::quiet_since(&svc.db, &suffix, i64::MAX).await? {
        let Ok(user) = UserId::parse(&present.user_id) else { continue };
        {
            let mut sent = svc.presence.sent_again.lock().unwrap_or_else(|e| e.into_inner());
            let last = sent.entry(user.clone()).or_insert(now);
            if now - *last < every {
                continue;
            }
            *last = now;
        }
        send_to_servers(svc, &user).await?;
    }
    Ok(())
}

/// Local users whose syncs stopped `offline_after` ago without activity since go offline;
/// online users without activity for `idle_after` become unavailable (as Synapse's
/// `handle_timeout`).
async fn time_out(svc: &Services, now: i64) -> Result<()> {
    let (idle, offline) = (svc.config.presence.idle_after.0 as i64, svc.config.presence.offline_after.0 as i64);
    let suffix = format!(":{}", svc.config.server_name);
    for quiet in storage::presence::quiet_since(&svc.db, &suffix, now - idle.min(offline)).await? {
        let (to, since, sync_counts) = if quiet.last_active_ts.max(quiet.last_sync_ts) < now - offline {
            ("offline", now - offline, true)
        } else if quiet.state == "online" && quiet.last_active_ts < now - idle {
            ("unavailable", now - idle, false)
        } else {
            continue;
        };
        let mut tx = svc.db.begin().await?;
        if storage::presence::time_out(&mut tx, &quiet.user_id, &quiet.state, to, since, sync_counts).await?.is_none() {
            // Active meanwhile (through another process): the change's position goes back.
            tx.rollback().await?;
            continue;
        }
        tx.commit().await?;
        let Ok(user) = UserId::parse(&quiet.user_id) else { continue };
        announce(svc, &user).await?;
    }
    Ok(())
}
