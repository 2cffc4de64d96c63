//! Message retention (MSC1763, as Synapse implements it): a room's `m.room.retention` state
//! event, completed by the server's default policy and bounded by the allowed range, says how
//! long its messages live. Once retention is enabled, non-state events older than that are
//! no longer served to clients, and periodic purge jobs delete them (`purge_before`, shared
//! with the admin API's `purge_history`). See docs/retention.md.

use std::collections::HashMap;
use std::sync::{Arc, Weak};
use std::time::Duration;

use ruma::{EventId, RoomId};
use serde_json::Value;

use crate::Services;
use crate::config::PurgeJobConfig;
use crate::error::{Error, Result};
use crate::storage::{self, events::StoredEvent};

pub const EVENT_TYPE: &str = "m.room.retention";

/// A retention policy; lifetimes in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    pub min_lifetime: Option<u64>,
    pub max_lifetime: Option<u64>,
}

impl Policy {
    /// The policy of an `m.room.retention` content, or what is wrong with it (Synapse's
    /// checks: integers, and the minimum not above the maximum).
    pub fn from_content(content: &Value) -> std::result::Result<Policy, String> {
        let field = |name: &str| match content.get(name) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(Some).ok_or_else(|| format!("'{name}' must be a non-negative integer")),
        };
        let policy = Policy { min_lifetime: field("min_lifetime")?, max_lifetime: field("max_lifetime")? };
        if let (Some(min), Some(max)) = (policy.min_lifetime, policy.max_lifetime)
            && min > max
        {
            return Err("'min_lifetime' can't be greater than 'max_lifetime'".into());
        }
        Ok(policy)
    }
}

/// The room's policy: its `m.room.retention` event, with the server default for what it
/// leaves out (or all of it when the room has none).
pub async fn policy(svc: &Services, room_id: &RoomId) -> Result<Policy> {
    let default = &svc.config.retention.default_policy;
    let own = match storage::rooms::current_state_event(&svc.db, room_id.as_str(), EVENT_TYPE, "").await? {
        Some(id) => {
            let id = EventId::parse(&id).map_err(|e| Error::Internal(e.into()))?;
            // A malformed policy from another server counts as none (as Synapse).
            super::get_pdu(svc, &id).await?.and_then(|p| Policy::from_content(&p.content_value()).ok())
        }
        None => None,
    }
    .unwrap_or_default();
    Ok(Policy {
        min_lifetime: own.min_lifetime.or(default.min_lifetime.map(u64::from)),
        max_lifetime: own.max_lifetime.or(default.max_lifetime.map(u64::from)),
    })
}

/// A maximum lifetime within the range the server allows: raised to the allowed minimum
/// (history an operator must keep), then lowered to the allowed maximum (history an operator
/// must delete).
fn bounded(svc: &Services, max_lifetime: u64) -> u64 {
    let config = &svc.config.retention;
    let raised = config.allowed_lifetime_min.map_or(max_lifetime, |min| max_lifetime.max(min.0));
    config.allowed_lifetime_max.map_or(raised, |max| raised.min(max.0))
}

/// How long the room's messages live, when retention is enabled and they do not live forever.
pub async fn max_lifetime(svc: &Services, room_id: &RoomId) -> Result<Option<u64>> {
    if !svc.config.retention.enabled {
        return Ok(None);
    }
    Ok(policy(svc, room_id).await?.max_lifetime.map(|l| bounded(svc, l)))
}

fn expiry_ts(max_lifetime: u64) -> i64 {
    storage::now_ms().saturating_sub(i64::try_from(max_lifetime).unwrap_or(i64::MAX))
}

/// Which events have outlived their room's policy (non-state events only: state stays, per
/// MSC1763). Remembers each room's limit for the events of one answer.
#[derive(Default)]
pub struct Expiry {
    oldest_allowed: HashMap<String, Option<i64>>,
}

impl Expiry {
    pub async fn expired(&mut self, svc: &Services, event: &StoredEvent) -> Result<bool> {
        if !svc.config.retention.enabled || event.state_key.is_some() {
            return Ok(false);
        }
        let oldest = match self.oldest_allowed.get(&event.room_id) {
            Some(oldest) => *oldest,
            None => {
                let room_id = RoomId::parse(&event.room_id).map_err(|e| Error::Internal(e.into()))?;
                let oldest = max_lifetime(svc, &room_id).await?.map(expiry_ts);
                self.oldest_allowed.insert(event.room_id.clone(), oldest);
                oldest
            }
        };
        let Some(oldest) = oldest else { return Ok(false) };
        let id = EventId::parse(&event.event_id).map_err(|e| Error::Internal(e.into()))?;
        Ok(super::get_pdu(svc, &id).await?.is_some_and(|p| i64::from(p.origin_server_ts.0) < oldest))
    }
}

/// Purges the room's history before timeline position `before`: its non-state events are
/// deleted (those of local users only with `delete_local_events`, else they are kept out of
/// the timeline), its state events kept out of the timeline; its forward extremities stay.
/// Returns how many events were deleted.
pub async fn purge_before(svc: &Services, room_id: &RoomId, before: i64, delete_local_events: bool) -> Result<usize> {
    // No event is appended to the room meanwhile (its extremities are what the purge keeps).
    let _guard = svc.rooms.lock(&svc.db, room_id).await?;
    let kept_senders = if delete_local_events { String::new() } else { format!("%:{}", svc.config.server_name) };
    let mut tx = svc.db.begin().await?;
    let purged = storage::purge::history(&mut tx, room_id.as_str(), before, &kept_senders).await?;
    tx.commit().await?;
    // Recent appends may be among what is gone or now kept out of the timeline, here and in
    // the other processes.
    crate::cluster::publish(svc, crate::cluster::Message::HistoryPurged).await;
    for id in &purged.deleted {
        if let Ok(id) = EventId::parse(id) {
            svc.rooms.forget_event(&id);
        }
    }
    tracing::info!(%room_id, deleted = purged.deleted.len(), outliers = purged.outliers, "purged history");
    Ok(purged.deleted.len())
}

/// The timeline position before which the room's events are older than `ts` (ms).
pub async fn position_before_ts(svc: &Services, room_id: &RoomId, ts: i64) -> Result<i64> {
    Ok(storage::purge::first_pos_since(&svc.db, room_id.as_str(), ts).await?.unwrap_or(i64::MAX))
}

/// Purges, in every room whose (unbounded) maximum lifetime is in (`shortest`, `longest`],
/// the events that outlived the room's bounded lifetime. One room failing does not stop
/// the others.
pub async fn purge_expired(svc: &Services, shortest: Option<u64>, longest: Option<u64>) -> Result<()> {
    for (room_id, _, _) in storage::rooms::all_rooms(&svc.db).await? {
        let Ok(room_id) = RoomId::parse(&room_id) else { continue };
        let Some(lifetime) = policy(svc, &room_id).await?.max_lifetime else { continue };
        if shortest.is_some_and(|s| lifetime <= s) || longest.is_some_and(|l| lifetime > l) {
            continue;
        }
        let before = position_before_ts(svc, &room_id, expiry_ts(bounded(svc, lifetime))).await?;
        if let Err(e) = purge_before(svc, &room_id, before, true).await {
            tracing::warn!(%room_id, error = %e, "retention purge failed");
        }
    }
    Ok(())
}

/// Runs the configured purge jobs, each every `interval`, while the server lives. The one
/// place retention purges start: in a deployment of several processes, only one should run it.
pub async fn run(svc: Weak<Services>) {
    let Some(jobs) = svc.upgrade().filter(|s| s.config.retention.enabled).map(|s| s.config.retention.jobs()) else {
        return;
    };
    futures::future::join_all(jobs.into_iter().map(|job| run_job(svc.clone(), job))).await;
}

async fn run_job(svc: Weak<Services>, job: PurgeJobConfig) {
    tracing::info!(?job, "retention purge job set up");
    let mut ticks = tokio::time::interval(Duration::from_millis(job.interval.0));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is immediate; jobs first run one interval after the start (as Synapse's).
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let Some(svc): Option<Arc<Services>> = svc.upgrade() else { return };
        if !svc.cluster.leads() {
            continue;
        }
        let shortest = job.shortest_max_lifetime.map(u64::from);
        let longest = job.longest_max_lifetime.map(u64::from);
        if let Err(e) = purge_expired(&svc, shortest, longest).await {
            tracing::warn!(error = %e, "retention purge job failed");
        }
    }
}
