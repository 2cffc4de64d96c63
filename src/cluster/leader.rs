//! Leader election: the background jobs (the federation sender, the outboxes) run on the one
//! process holding a PostgreSQL session-level advisory lock. The lock lives as long as the
//! holder's connection: when the process dies, PostgreSQL ends its session and a standby,
//! which tries the lock every `CAMPAIGN_INTERVAL`, takes over. The leader checks its
//! connection as often, and stops leading when it is lost.

use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::storage;

/// How often a standby tries to take the lock and the leader checks that it still holds it.
pub const CAMPAIGN_INTERVAL: Duration = Duration::from_millis(500);

/// The name of the lock the leader holds.
const LEADER_LOCK: &str = "plexus:leader";

pub struct Leadership {
    leading: watch::Receiver<bool>,
    /// Alone, the value never changes: the sender is kept so receivers do not see it gone.
    _alone: Option<watch::Sender<bool>>,
}

impl Leadership {
    /// One process owns the database (SQLite): it always leads.
    pub fn alone() -> Self {
        let (tx, leading) = watch::channel(true);
        Leadership { leading, _alone: Some(tx) }
    }

    /// Campaigns for the lock on a connection of its own, until every receiver is dropped.
    pub fn elect(database_url: &str) -> Self {
        let (tx, leading) = watch::channel(false);
        tokio::spawn(campaign(database_url.to_owned(), tx));
        Leadership { leading, _alone: None }
    }

    pub fn receiver(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

async fn campaign(url: String, leading: watch::Sender<bool>) {
    use sqlx::Connection;
    let key = storage::cluster::lock_key(LEADER_LOCK);
    while !leading.is_closed() {
        match sqlx::AnyConnection::connect(&url).await {
            Ok(mut conn) => {
                if let Err(e) = hold(&mut conn, key, &leading).await {
                    tracing::warn!(error = %e, "lost the leader election connection");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot connect for the leader election"),
        }
        if leading.send_replace(false) {
            tracing::warn!("lost the leadership: the background jobs stop here");
        }
        tokio::time::sleep(CAMPAIGN_INTERVAL).await;
    }
}

/// Tries the lock until it is taken, then checks the connection, until it fails or nobody
/// listens any more.
async fn hold(conn: &mut sqlx::AnyConnection, key: i64, leading: &watch::Sender<bool>) -> sqlx::Result<()> {
    while !leading.is_closed() {
        if *leading.borrow() {
            storage::cluster::ping(conn).await?;
        } else if storage::cluster::try_advisory_lock(conn, key).await? {
            tracing::info!("became the leader: the background jobs run here");
            leading.send_replace(true);
        }
        tokio::time::sleep(CAMPAIGN_INTERVAL).await;
    }
    Ok(())
}

/// Waits until this process leads. Meanwhile the job's `signals` are drained: the leader
/// loads its queues from the database when it starts. False when the server is gone.
pub async fn until_leading<T>(leading: &mut watch::Receiver<bool>, signals: &mut mpsc::UnboundedReceiver<T>) -> bool {
    loop {
        if *leading.borrow_and_update() {
            return true;
        }
        tokio::select! {
            signal = signals.recv() => if signal.is_none() { return false },
            changed = leading.changed() => if changed.is_err() { return false },
        }
    }
}

/// Completes when this process stops leading.
pub async fn deposed(leading: &mut watch::Receiver<bool>) {
    let _ = leading.wait_for(|l| !*l).await;
}
