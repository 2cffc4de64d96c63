//! Group commit: appends that arrive while others are writing share one transaction and
//! commit together, so that the cost of a commit (a hand-off to SQLite's single writer and
//! its WAL write; PostgreSQL's flush to disk, with the stream counter's row locked until
//! then) is paid once per batch instead of once per event.
//!
//! Most appends (`Db::append_in_batch`) hand their script (`storage::script`) to the open batch
//! (starting one when none is open) and wait: a committer task runs the scripts queued in the
//! batch one after another, in a savepoint, then commits, and tells every member its outcome.
//! When a script fails, the savepoint is rolled back and the others are written again without
//! it, so that it fails only its own append. Since these members do not write themselves,
//! nothing is dropped halfway by a member that goes away.
//!
//! An append that must read back what it writes (a state event's state group, a fork's
//! resolved state, a redaction) joins the batch instead (`Db::join_batch`) and writes while it holds the
//! batch alone, then leaves and waits: the committer commits the batch once the members queued
//! before it have written (the lock is fair). So nothing is answered before its data is
//! committed. A member that leaves without finishing (an error, or a task dropped midway)
//! poisons the batch: what it wrote cannot be told apart from the rest, so the whole batch is
//! rolled back and every member gets the error. Requests that write are therefore run to their
//! end even when their client goes away (`http::finish_writes`).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};

use sqlx::AnyPool;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, Notify, watch};

use super::Tx;
use super::script::Script;

/// What a batch's members learn once it is over (None until then): whether it committed, and
/// then the outcome of each queued script (its stream position).
type Outcome = Option<Result<Arc<[Result<i64, String>]>, String>>;

struct Open {
    tx: Tx,
    /// The scripts of the members that do not write themselves, in the order they came.
    queued: Vec<Script>,
    /// Members so far, and when the batch began (for the log).
    members: usize,
    began: std::time::Instant,
    poisoned: bool,
    outcome: watch::Sender<Outcome>,
}

/// The open batch and the committer's wake-up.
pub struct Batches {
    /// The pool the batches' transactions are taken from.
    pool: AnyPool,
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
    pub(super) fn start(pool: AnyPool) -> Arc<Batches> {
        let committer = Arc::new(Notify::new());
        let batches = Arc::new(Batches { pool, open: Mutex::new(None), committer: committer.clone() });
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
        let Open { mut tx, queued, members, began, mut poisoned, outcome } = batch;
        let results = write_queued(&mut tx, queued).await;
        poisoned |= results.is_none();
        let writing = began.elapsed();
        let committed: Result<Arc<[Result<i64, String>]>, String> = if poisoned {
            match tx.rollback().await {
                Ok(()) => Err("a write of the same batch failed; the batch was rolled back".to_owned()),
                Err(e) => Err(e.to_string()),
            }
        } else {
            tx.commit().await.map(|()| Arc::from(results.unwrap_or_default())).map_err(|e| e.to_string())
        };
        match &committed {
            Ok(_) => tracing::debug!(members, ?writing, total = ?began.elapsed(), "batch of writes committed"),
            Err(e) => tracing::warn!(error = %e, "batch of writes not committed"),
        }
        outcome.send_replace(Some(committed));
    }
}

/// Runs the queued scripts of a batch, after what its members that write themselves wrote:
/// the outcome of each, or None when the batch must be rolled back. They run in a savepoint:
/// when one fails, they are undone and written again without it, so that it fails alone.
async fn write_queued(tx: &mut Tx, queued: Vec<Script>) -> Option<Vec<Result<i64, String>>> {
    let mut results: Vec<Result<i64, String>> = Vec::with_capacity(queued.len());
    if queued.is_empty() {
        return Some(results);
    }
    results.resize_with(queued.len(), || Err("not written".to_owned()));
    let mut pending: Vec<(usize, Script)> = queued.into_iter().enumerate().collect();
    sqlx::query("SAVEPOINT queued").execute(&mut **tx).await.ok()?;
    loop {
        let (positions, failure) = super::script::run_each(pending.iter().map(|(_, s)| s), tx).await;
        for ((i, _), pos) in pending.iter().zip(&positions) {
            results[*i] = Ok(*pos);
        }
        let Some(e) = failure else { return Some(results) };
        tracing::warn!(error = %e, "an append of a batch failed");
        if positions.len() >= pending.len() {
            return None;
        }
        let (i, _) = pending.remove(positions.len());
        results[i] = Err(e.to_string());
        sqlx::query("ROLLBACK TO SAVEPOINT queued").execute(&mut **tx).await.ok()?;
    }
}

/// Membership of the open batch: the batch's transaction, held alone until `commit`.
pub struct BatchTx<'a> {
    open: MappedMutexGuard<'a, Open>,
    committer: &'a Notify,
    finished: bool,
}

/// The open batch, with one member more (started when none is open).
async fn enter(batches: &Batches) -> sqlx::Result<MappedMutexGuard<'_, Open>> {
    let mut guard = batches.open.lock().await;
    if guard.is_none() {
        let tx = batches.pool.begin().await?;
        let began = std::time::Instant::now();
        let outcome = watch::channel(None).0;
        *guard = Some(Open { tx, queued: Vec::new(), members: 0, began, poisoned: false, outcome });
    }
    let mut open = MutexGuard::try_map(guard, Option::as_mut)
        .map_err(|_| sqlx::Error::Protocol("no open batch after starting one".to_owned()))?;
    open.members += 1;
    Ok(open)
}

/// Waits until a batch is over: Ok with its queued scripts' outcomes once it is committed.
async fn outcome(mut outcome: watch::Receiver<Outcome>) -> sqlx::Result<Arc<[Result<i64, String>]>> {
    let outcome = outcome
        .wait_for(Option::is_some)
        .await
        .map_err(|_| sqlx::Error::Protocol("the batch was abandoned".to_owned()))?;
    match &*outcome {
        Some(Ok(results)) => Ok(results.clone()),
        Some(Err(e)) => Err(sqlx::Error::Protocol(e.clone())),
        None => Err(sqlx::Error::Protocol("the batch has no outcome".to_owned())),
    }
}

/// Queues an append's script in the open batch and waits until the batch is committed: the
/// stream position the script took. Dropped midway, the script is still run and committed
/// (or never queued).
pub(super) async fn run_queued(batches: &Batches, script: Script) -> sqlx::Result<i64> {
    let (index, committed) = {
        let mut open = enter(batches).await?;
        open.queued.push(script);
        (open.queued.len() - 1, open.outcome.subscribe())
    };
    batches.committer.notify_one();
    let results = outcome(committed).await?;
    match results.get(index) {
        Some(Ok(pos)) => Ok(*pos),
        Some(Err(e)) => Err(sqlx::Error::Protocol(e.clone())),
        None => Err(sqlx::Error::Protocol("the batch lost a queued append".to_owned())),
    }
}

impl<'a> BatchTx<'a> {
    pub(super) async fn join(batches: &'a Batches) -> sqlx::Result<BatchTx<'a>> {
        let open = enter(batches).await?;
        Ok(BatchTx { open, committer: &batches.committer, finished: false })
    }

    /// Leaves the batch and waits until it is committed.
    pub async fn commit(mut self) -> sqlx::Result<()> {
        self.finished = true;
        let committed = self.open.outcome.subscribe();
        drop(self);
        outcome(committed).await.map(drop)
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
