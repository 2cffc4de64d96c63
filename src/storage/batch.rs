//! Group commit: appends that arrive while others are writing share one transaction and
//! commit together, so that the cost of a commit (a hand-off to SQLite's single writer and
//! its WAL write; PostgreSQL's flush to disk, with the stream counter's row locked until
//! then) is paid once per batch instead of once per event.
//!
//! Most appends (`Db::append_in_batch`) hand their script (`storage::script`) to the open batch
//! (starting one when none is open) and wait: a committer task closes the batch, runs the
//! scripts queued in it one after another before the next batch may write, commits, and tells
//! every member its outcome. When a script fails (a real SQL error), the batch is rolled back,
//! that append fails, and the other queued ones are written again in the next batch: a
//! failure stays with its own append, at no cost to batches that do not fail. Since these
//! members do not write themselves, none can leave a write half done by going away.
//!
//! An append that must read back what it writes (a state event's state group, a fork's
//! resolved state, a redaction) joins the batch instead (`Db::join_batch`) and writes while it
//! holds the batch alone, then leaves and waits: the committer commits the batch once the
//! members queued before it have written (the lock is fair). So nothing is answered before its
//! data is committed. A member that leaves without finishing (an error, or a task dropped
//! midway) poisons the batch: what it wrote cannot be told apart from the rest, so the batch is
//! rolled back and every member that wrote itself gets the error (the queued appends are
//! written again). Requests that write are therefore run to their end even when their client
//! goes away (`http::finish_writes`).

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Weak};

use sqlx::AnyPool;
use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, Notify, oneshot, watch};

use super::Tx;
use super::script::Script;

/// What a batch's members that write themselves learn once it is over (None until then).
type Outcome = Option<Result<(), String>>;

/// A queued append: its script, and where its stream position goes once it is committed.
struct Queued {
    script: Script,
    answer: oneshot::Sender<Result<i64, String>>,
}

struct Open {
    tx: Tx,
    /// The appends of the members that do not write themselves, in the order they came.
    queued: Vec<Queued>,
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
        let mut open = batches.open.lock().await;
        let Some(batch) = open.take() else { continue };
        let Open { mut tx, queued, members, began, poisoned, outcome } = batch;
        // The queued scripts take their stream positions before the lock is free for the next
        // batch: on PostgreSQL, a member of the next batch that took one first would hold the
        // counter's row until its own commit, which waits for this one.
        let scripts: Vec<&Script> = queued.iter().map(|q| &q.script).collect();
        let (positions, failure) = super::script::run_each(&scripts, &mut tx).await;
        // The next batch starts while this one commits.
        drop(open);
        if failure.is_none() && !poisoned {
            let writing = began.elapsed();
            match tx.commit().await {
                Ok(()) => {
                    tracing::debug!(members, ?writing, total = ?began.elapsed(), "batch of writes committed");
                    for (queued, pos) in queued.into_iter().zip(positions) {
                        let _ = queued.answer.send(Ok(pos));
                    }
                    outcome.send_replace(Some(Ok(())));
                }
                Err(e) => {
                    tracing::warn!(error = %e, "batch of writes not committed");
                    for queued in queued {
                        let _ = queued.answer.send(Err(e.to_string()));
                    }
                    outcome.send_replace(Some(Err(e.to_string())));
                }
            }
            continue;
        }
        // A queued append failed, or a member that wrote itself did not finish: the batch is
        // rolled back. The failed append fails alone; the other queued ones are written again
        // in the next batch (those that wrote themselves cannot be).
        let rolled_back = tx.rollback().await;
        let mut again = Vec::with_capacity(queued.len());
        for (n, queued) in queued.into_iter().enumerate() {
            match &failure {
                Some(e) if n == positions.len() => {
                    tracing::warn!(error = %e, "an append of a batch failed");
                    let _ = queued.answer.send(Err(e.to_string()));
                }
                _ => again.push(queued),
            }
        }
        let error = match rolled_back {
            Ok(()) => "a write of the same batch failed; the batch was rolled back".to_owned(),
            Err(e) => e.to_string(),
        };
        tracing::warn!(error = %error, "batch of writes not committed");
        outcome.send_replace(Some(Err(error)));
        if !again.is_empty() {
            requeue(&batches, again).await;
        }
    }
}

/// Puts appends at the head of the open batch (started when none is open).
async fn requeue(batches: &Batches, again: Vec<Queued>) {
    match enter(batches).await {
        Ok(mut open) => {
            open.members += again.len() - 1;
            let later = std::mem::replace(&mut open.queued, again);
            open.queued.extend(later);
        }
        Err(e) => {
            for queued in again {
                let _ = queued.answer.send(Err(e.to_string()));
            }
            return;
        }
    }
    batches.committer.notify_one();
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

/// Waits until a batch is over: Ok once it is committed.
async fn outcome(mut outcome: watch::Receiver<Outcome>) -> sqlx::Result<()> {
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

/// Queues an append's script in the open batch and waits until it is committed: the stream
/// position the script took. Dropped midway, the script is still run and committed (or never
/// queued).
pub(super) async fn run_queued(batches: &Batches, script: Script) -> sqlx::Result<i64> {
    let (answer, answered) = oneshot::channel();
    enter(batches).await?.queued.push(Queued { script, answer });
    batches.committer.notify_one();
    match answered.await {
        Ok(Ok(pos)) => Ok(pos),
        Ok(Err(e)) => Err(sqlx::Error::Protocol(e)),
        Err(_) => Err(sqlx::Error::Protocol("the batch was abandoned".to_owned())),
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
        outcome(committed).await
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
