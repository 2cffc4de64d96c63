//! Storage: the only place with SQL. One `Db` over SQLite or PostgreSQL through sqlx's
//! `Any` driver; queries use `$N` placeholders and SQL both dialects accept.

pub mod account_data;
pub mod appservice;
pub mod batch;
pub mod cluster;
pub mod cross_signing;
pub mod dehydrated_devices;
pub mod device_lists;
pub mod devices;
pub mod e2ee_keys;
pub mod events;
pub mod federation;
pub mod filters;
pub mod key_backup;
pub mod media;
pub mod openid;
pub mod presence;
pub mod purge;
pub mod push;
pub mod receipts;
pub mod registration_tokens;
pub mod reports;
pub mod room_deletions;
pub mod rooms;
pub mod script;
pub mod search;
pub mod sliding_sync;
pub mod sso;
pub mod state;
pub mod sync;
pub mod to_device;
pub mod user_directory;
pub mod users;

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{AnyPool, Executor};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Sqlite,
    Postgres,
}

/// The database. SQLite allows one writer at a time, so writes go through a pool of one
/// connection there (no `SQLITE_BUSY` on lock upgrades); on PostgreSQL both pools are one,
/// and advisory locks held across processes (`cluster::advisory_lock`) have a pool of their
/// own, so that lock holders never wait for a connection a lock holder needs.
#[derive(Clone, Debug)]
pub struct Db {
    pub kind: DbKind,
    read: AnyPool,
    write: AnyPool,
    batches: Arc<batch::Batches>,
    locks: Option<AnyPool>,
    stream_reads: Arc<SharedReads>,
    /// SQLite: the WAL checkpoint task, stopped with the last clone.
    _checkpointer: Option<Arc<AbortOnDrop>>,
}

/// A background task that ends when this is dropped.
#[derive(Debug)]
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

pub type Tx = sqlx::Transaction<'static, sqlx::Any>;

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<Self> {
        sqlx::any::install_default_drivers();
        if url.starts_with("sqlite:") {
            let path = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
            let path = path.split('?').next().unwrap_or(path);
            if let Some(parent) = std::path::Path::new(path).parent().filter(|p| !p.as_os_str().is_empty()) {
                std::fs::create_dir_all(parent)
                    .with_context(|| format!("cannot create database folder {}", parent.display()))?;
            }
            let url = if url.contains('?') { url.to_owned() } else { format!("{url}?mode=rwc") };
            let options = AnyConnectOptions::from_str(&url).context("invalid database URL")?;
            let pool = |max: u32, extra_pragmas: Option<&'static str>| {
                AnyPoolOptions::new()
                    .max_connections(max)
                    .acquire_timeout(Duration::from_secs(30))
                    .after_connect(move |conn, _| {
                        Box::pin(async move {
                            conn.execute(
                                "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
                                 PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;",
                            )
                            .await?;
                            if let Some(pragmas) = extra_pragmas {
                                conn.execute(pragmas).await?;
                            }
                            Ok(())
                        })
                    })
                    .connect_with(options.clone())
            };
            // The single writer is what every send waits for, so it does not copy the WAL
            // back into the database on commit (SQLite's default every 1,000 pages, with an
            // fsync): `checkpoint_wal` does it beside it. The writer still checkpoints if the
            // WAL grows far beyond that (a safety net should the background task fall behind).
            let write = pool(1, Some("PRAGMA wal_autocheckpoint = 20000;"))
                .await
                .with_context(|| format!("cannot open database {url}"))?;
            let read = pool(max_connections, None).await?;
            sqlx::migrate!("migrations/sqlite").run(&write).await.context("database migration failed")?;
            let checkpointer = Some(Arc::new(AbortOnDrop(tokio::spawn(checkpoint_wal(read.clone())).abort_handle())));
            Ok(Db {
                kind: DbKind::Sqlite,
                read,
                batches: batch::Batches::start(write.clone()),
                write,
                locks: None,
                stream_reads: Arc::default(),
                _checkpointer: checkpointer,
            })
        } else {
            let options = AnyConnectOptions::from_str(url).context("invalid database URL")?;
            let pool = AnyPoolOptions::new()
                .max_connections(max_connections)
                .acquire_timeout(Duration::from_secs(30))
                .connect_with(options.clone())
                .await
                .with_context(|| format!("cannot connect to database {url}"))?;
            sqlx::migrate!("migrations/postgres").run(&pool).await.context("database migration failed")?;
            let locks = AnyPoolOptions::new()
                .max_connections(max_connections.max(8))
                .min_connections(0)
                .idle_timeout(Duration::from_secs(60))
                .acquire_timeout(Duration::from_secs(30))
                .connect_lazy_with(options);
            Ok(Db {
                kind: DbKind::Postgres,
                read: pool.clone(),
                batches: batch::Batches::start(pool.clone()),
                write: pool,
                locks: Some(locks),
                stream_reads: Arc::default(),
                _checkpointer: None,
            })
        }
    }

    /// Pool for reads.
    pub fn read(&self) -> &AnyPool {
        &self.read
    }

    /// Starts a transaction for writes.
    pub async fn begin(&self) -> sqlx::Result<Tx> {
        self.write.begin().await
    }

    /// Joins the open batch of writes that commit together (group commit, see `batch`),
    /// starting one when none is open. For appends to rooms, whose rate is what matters.
    pub async fn join_batch(&self) -> sqlx::Result<batch::BatchTx<'_>> {
        batch::BatchTx::join(&self.batches).await
    }

    /// Runs an append's script in the open batch of writes (see `batch`) and returns the
    /// stream position it took, once committed.
    pub async fn append_in_batch(&self, script: script::Script) -> sqlx::Result<i64> {
        batch::run_queued(&self.batches, script).await
    }
}

/// Copies SQLite's write-ahead log back into the database file every `WAL_CHECKPOINT_EVERY`
/// from a reading connection (PASSIVE: never waits for, nor blocks, the writer or readers).
async fn checkpoint_wal(read: AnyPool) {
    let mut ticks = tokio::time::interval(WAL_CHECKPOINT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if let Err(e) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&read).await {
            tracing::warn!(error = %e, "WAL checkpoint failed");
        }
    }
}

const WAL_CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Takes the next position of the global stream, inside the writing transaction, so that
/// positions become visible in the order they were taken (the row stays locked until commit).
/// This holds with several processes writing to one PostgreSQL too: a writer that took
/// position N blocks every other writer's UPDATE until it commits or rolls back, so no
/// position above N is committed before N, and a reader that sees the counter at N sees
/// every event up to N (a rolled-back position is taken again by the next writer).
pub async fn next_stream_pos(tx: &mut Tx) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE stream_counter SET value = value + 1 WHERE id = 1 RETURNING value")
        .fetch_one(&mut **tx)
        .await
}

/// The next (lower) negative position for a backfilled event.
pub async fn next_backfill_pos(tx: &mut Tx) -> sqlx::Result<i64> {
    sqlx::query_scalar("UPDATE backfill_counter SET value = value - 1 WHERE id = 1 RETURNING value")
        .fetch_one(&mut **tx)
        .await
}

/// Reads of the stream position, shared by the callers that want one at the same time.
#[derive(Debug, Default)]
struct SharedReads {
    /// Callers so far: each takes the next number when it asks.
    asked: AtomicU64,
    /// The latest read: how many callers had asked when it started, and what it read.
    latest: tokio::sync::Mutex<(u64, i64)>,
}

/// The highest stream position taken and committed so far: at least every position committed
/// before the call. A read that started after the caller asked answers it too, so the
/// hundred long-polls one send wakes cost a read or two, not a hundred.
pub async fn current_stream_pos(db: &Db) -> sqlx::Result<i64> {
    let reads = &db.stream_reads;
    let number = reads.asked.fetch_add(1, Ordering::SeqCst) + 1;
    let mut latest = reads.latest.lock().await;
    if latest.0 >= number {
        return Ok(latest.1);
    }
    let started = reads.asked.load(Ordering::SeqCst);
    let pos = sqlx::query_scalar("SELECT value FROM stream_counter WHERE id = 1").fetch_one(db.read()).await?;
    *latest = (started, pos);
    Ok(pos)
}

/// Whether an error is a unique-key violation (a row that already exists).
pub fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
