//! Group commit: appends that arrive while others are writing share one transaction and
//! commit together, so that the cost of a commit (a hand-off to SQLite's single writer and
//! its WAL write; PostgreSQL's flush to disk, with the stream counter's row locked until
//! then) is paid once per batch instead of once per event.
//!
//! A member joins the open batch (starting one when none is open), writes while it holds the
//! batch alone, then leaves and waits: a committer task commits the batch once the members
//! queued before it have written (the lock is fair), and tells every member the outcome. So
//! nothing is answered before its data is committed. A member that leaves without finishing
//! (an error, or a task dropped midway) poisons the batch: what it wrote cannot be told
//! apart from the rest, so the whole batch is rolled back and every member gets the error.
//! Requests that write are therefore run to their end even when their client goes away
//! (`http::finish_writes`).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};

use sqlx::AnyPool;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, Notify, watch};

use super::Tx;

/// What a batch's members learn once it is over (None until then).
type Outcome = Option<Result<(), String>>;

struct Open {
    tx: Tx,
    /// Members so far, and when the batch began (for the log).
    members: usize,
    began: std::time::Instant,
    poisoned: bool,
    outcome: watch::Sender<Outcome>,
}

/// The open batch and the committer's wake-up.
pub struct Batches {
    open: Mutex<Option<Open>>,
    committer: Arc<Notify>,
}

impl std::fmt::Debug for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batches")
    }
}

impl Batches {
    /// The batches of a database, with their committer task (which ends with them).
    pub(super) fn start() -> Arc<Batches> {
        let committer = Arc::new(Notify::new());
        let batches = Arc::new(Batches { open: Mutex::new(None), committer: committer.clone() });
        tokio::spawn(commit_batches(Arc::downgrade(&batches), committer));
        batches
    }
}

impl Drop for Batches {
    fn drop(&mut self) {
        // Lets the committer see that it has nothing left to do.
        self.committer.notify_one();
    }
}

/// Commits the open batch each time a member leaves it, once the members queued before have
/// written.
async fn commit_batches(batches: Weak<Batches>, committer: Arc<Notify>) {
    loop {
        committer.notified().await;
        let Some(batches) = batches.upgrade() else { return };
        let Some(batch) = batches.open.lock().await.take() else { continue };
        // The lock is free again: the next batch starts while this one commits.
        let (members, writing) = (batch.members, batch.began.elapsed());
        let outcome = if batch.poisoned {
            match batch.tx.rollback().await {
                Ok(()) => Err("a write of the same batch failed; the batch was rolled back".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            batch.tx.commit().await.map_err(|e| e.to_string())
        };
        match &outcome {
            Ok(()) => tracing::debug!(members, ?writing, total = ?batch.began.elapsed(), "batch of writes committed"),
            Err(e) => tracing::warn!(error = %e, "batch of writes not committed"),
        }
        batch.outcome.send_replace(Some(outcome));
    }
}

/// Membership of the open batch: the batch's transaction, held alone until `commit`.
pub struct BatchTx<'a> {
    open: MappedMutexGuard<'a, Open>,
    committer: &'a Notify,
    finished: bool,
}

impl<'a> BatchTx<'a> {
    pub(super) async fn join(batches: &'a Batches, pool: &AnyPool) -> sqlx::Result<BatchTx<'a>> {
        let mut guard = batches.open.lock().await;
        if guard.is_none() {
            let tx = pool.begin().await?;
            let began = std::time::Instant::now();
            *guard = Some(Open { tx, members: 0, began, poisoned: false, outcome: watch::channel(None).0 });
        }
        let mut open = MutexGuard::try_map(guard, Option::as_mut)
            .map_err(|_| sqlx::Error::Protocol("no open batch after starting one".to_owned()))?;
        open.members += 1;
        Ok(BatchTx { open, committer: &batches.committer, finished: false })
    }

    /// Leaves the batch and waits until it is committed.
    pub async fn commit(mut self) -> sqlx::Result<()> {
        self.finished = true;
        let mut outcome = self.open.outcome.subscribe();
        drop(self);
        let outcome = outcome
            .wait_for(Option::is_some)
            .await
            .map_err(|_| sqlx::Error::Protocol("the batch was abandoned".to_owned()))?;
        match &*outcome {
            Some(Ok(())) => Ok(()),
            Some(Err(e)) => Err(sqlx::Error::Protocol(e.clone())),
            None => Err(sqlx::Error::Protocol("the batch has no outcome".to_owned())),
        }
    }
}

impl Drop for BatchTx<'_> {
    fn drop(&mut self) {
        if !self.finished {
            self.open.poisoned = true;
        }
        self.committer.notify_one();
    }
}

impl Deref for BatchTx<'_> {
    type Target = Tx;
    fn deref(&self) -> &Tx {
        &self.open.tx
    }
}

impl DerefMut for BatchTx<'_> {
    fn deref_mut(&mut self) -> &mut Tx {
        &mut self.open.tx
    }
}
