//! What several Plexus processes on one database share beyond the data itself: UIA
//! sessions, registration nonces, the typing serial, announcements to the other processes
//! (PostgreSQL `NOTIFY`) and locks that hold across processes (PostgreSQL advisory locks).

use sqlx::Row;
use sqlx::pool::PoolConnection;

use super::{Db, DbKind, Tx};

/// The `LISTEN`/`NOTIFY` channel of the processes of one database.
pub const CHANNEL: &str = "plexus";

/// A user-interactive authentication session.
#[derive(Debug, Clone)]
pub struct UiaSession {
    pub user_id: Option<String>,
    pub completed: Vec<String>,
    pub registration_token: Option<String>,
}

/// Starts a session, and forgets those created before `expired_before`.
pub async fn create_uia_session(
    tx: &mut Tx,
    session_id: &str,
    user_id: Option<&str>,
    now: i64,
    expired_before: i64,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM uia_sessions WHERE created_ts < $1").bind(expired_before).execute(&mut **tx).await?;
    sqlx::query("INSERT INTO uia_sessions (session_id, user_id, created_ts) VALUES ($1, $2, $3)")
        .bind(session_id)
        .bind(user_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A session created at or after `created_since`.
pub async fn uia_session(db: &Db, session_id: &str, created_since: i64) -> sqlx::Result<Option<UiaSession>> {
    let row = sqlx::query(
        "SELECT user_id, completed, registration_token FROM uia_sessions WHERE session_id = $1 AND created_ts >= $2",
    )
    .bind(session_id)
    .bind(created_since)
    .fetch_optional(db.read())
    .await?;
    row.map(|r| {
        let completed: String = r.try_get("completed")?;
        Ok(UiaSession {
            user_id: r.try_get("user_id")?,
            completed: completed.split(',').filter(|s| !s.is_empty()).map(str::to_owned).collect(),
            registration_token: r.try_get("registration_token")?,
        })
    })
    .transpose()
}

/// Adds a completed stage (and the registration token it used); false if the session is gone.
pub async fn complete_uia_stage(
    tx: &mut Tx,
    session_id: &str,
    stage: &str,
    registration_token: Option<&str>,
) -> sqlx::Result<bool> {
    // Appending in the UPDATE itself: two stages completed at once both stay.
    let done = sqlx::query(
        "UPDATE uia_sessions SET
             completed = CASE WHEN completed = '' THEN $2 ELSE completed || ',' || $2 END,
             registration_token = COALESCE($3, registration_token)
         WHERE session_id = $1",
    )
    .bind(session_id)
    .bind(stage)
    .bind(registration_token)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Ends a session; false if another request ended it first.
pub async fn end_uia_session(tx: &mut Tx, session_id: &str) -> sqlx::Result<bool> {
    let done =
        sqlx::query("DELETE FROM uia_sessions WHERE session_id = $1").bind(session_id).execute(&mut **tx).await?;
    Ok(done.rows_affected() == 1)
}

/// Records a nonce handed out, and forgets those issued before `expired_before`.
pub async fn issue_nonce(tx: &mut Tx, nonce: &str, now: i64, expired_before: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM registration_nonces WHERE created_ts < $1")
        .bind(expired_before)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO registration_nonces (nonce, created_ts) VALUES ($1, $2)")
        .bind(nonce)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Consumes a nonce issued at or after `issued_since`; false if there is none.
pub async fn take_nonce(tx: &mut Tx, nonce: &str, issued_since: i64) -> sqlx::Result<bool> {
    let done = sqlx::query("DELETE FROM registration_nonces WHERE nonce = $1 AND created_ts >= $2")
        .bind(nonce)
        .bind(issued_since)
        .execute(&mut **tx)
        .await?;
    Ok(done.rows_affected() == 1)
}

/// The latest value of a shared counter.
pub async fn counter(db: &Db, name: &str) -> sqlx::Result<i64> {
    sqlx::query_scalar("SELECT value FROM cluster_counters WHERE name = $1").bind(name).fetch_one(db.read()).await
}

/// Sends `payload` to every process listening on `CHANNEL` (PostgreSQL only).
pub async fn notify(db: &Db, payload: &str) -> sqlx::Result<()> {
    // In FROM: the Any driver cannot decode a `void` column.
    sqlx::query("SELECT 1 FROM pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(db.read()).await?;
    Ok(())
}

/// Takes the next value of counter `name` and announces `payload(value)` in the same
/// transaction (PostgreSQL only). The counter row stays locked until commit, and
/// notifications are delivered in commit order, so every process receives them in the
/// order of their values.
pub async fn notify_in_order(db: &Db, name: &str, payload: impl FnOnce(i64) -> String) -> sqlx::Result<i64> {
    let mut tx = db.begin().await?;
    let value: i64 =
        sqlx::query_scalar("UPDATE cluster_counters SET value = value + 1 WHERE name = $1 RETURNING value")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    sqlx::query("SELECT 1 FROM pg_notify($1, $2)").bind(CHANNEL).bind(payload(value)).execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(value)
}

/// Tries to take the session-level advisory lock `key` on a connection of its own; it is
/// held until that connection closes (the process ends, or the connection is lost).
pub async fn try_advisory_lock(conn: &mut sqlx::AnyConnection, key: i64) -> sqlx::Result<bool> {
    sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(conn).await
}

/// Whether a connection still answers.
pub async fn ping(conn: &mut sqlx::AnyConnection) -> sqlx::Result<()> {
    sqlx::query("SELECT 1").execute(conn).await.map(drop)
}

/// An advisory lock held on a pooled connection; released when dropped.
pub struct AdvisoryLock {
    conn: Option<PoolConnection<sqlx::Any>>,
    key: i64,
}

impl Drop for AdvisoryLock {
    fn drop(&mut self) {
        let (Some(mut conn), Ok(runtime)) = (self.conn.take(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let key = self.key;
        runtime.spawn(async move {
            if let Err(e) = sqlx::query("SELECT pg_advisory_unlock($1)").bind(key).execute(&mut *conn).await {
                // Closing the session is what releases the lock then.
                tracing::warn!(error = %e, "cannot release an advisory lock; closing its connection");
                conn.close_on_drop();
            }
        });
    }
}

/// Waits for the advisory lock `key` shared by every process of the database. None on
/// SQLite, where one process owns the database.
pub async fn advisory_lock(db: &Db, key: i64) -> sqlx::Result<Option<AdvisoryLock>> {
    let (DbKind::Postgres, Some(pool)) = (db.kind, db.locks.clone()) else { return Ok(None) };
    // In a task of its own: a request dropped while it waits must not leave the lock taken
    // on a pooled connection (the task's result, once dropped, releases it).
    let waiting = tokio::spawn(async move {
        let mut conn = pool.acquire().await?;
        sqlx::query("SELECT 1 FROM pg_advisory_lock($1)").bind(key).execute(&mut *conn).await?;
        Ok::<_, sqlx::Error>(AdvisoryLock { conn: Some(conn), key })
    });
    waiting.await.map_err(|_| sqlx::Error::WorkerCrashed).and_then(|r| r.map(Some))
}

/// Takes a token from the bucket of `action` for `subject` (a token bucket of `burst` tokens
/// refilled at `rate` a second), in one statement so that concurrent takers on several
/// processes each see the other's take. Whether one was taken, and the tokens left.
/// PostgreSQL only (the statement commits by itself).
pub async fn take_token(
    db: &Db,
    action: &str,
    subject: &str,
    rate: f64,
    burst: f64,
    now: i64,
) -> sqlx::Result<(bool, f64)> {
    let row = sqlx::query(
        "INSERT INTO rate_limit_buckets AS b (action, subject, tokens, allowed, updated_ts)
         VALUES ($1, $2, $3 - 1, TRUE, $5)
         ON CONFLICT (action, subject) DO UPDATE SET
             allowed = LEAST($3, b.tokens + (EXCLUDED.updated_ts - b.updated_ts) * $4 / 1000.0) >= 1,
             tokens = LEAST($3, b.tokens + (EXCLUDED.updated_ts - b.updated_ts) * $4 / 1000.0)
                 - CASE WHEN LEAST($3, b.tokens + (EXCLUDED.updated_ts - b.updated_ts) * $4 / 1000.0) >= 1
                        THEN 1 ELSE 0 END,
             updated_ts = EXCLUDED.updated_ts
         RETURNING allowed, tokens",
    )
    .bind(action)
    .bind(subject)
    .bind(burst)
    .bind(rate)
    .bind(now)
    .fetch_one(db.read())
    .await?;
    Ok((row.try_get("allowed")?, row.try_get("tokens")?))
}

/// Forgets the buckets last used before `full_since` (full again: as if new).
pub async fn prune_rate_limits(db: &Db, full_since: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM rate_limit_buckets WHERE updated_ts < $1").bind(full_since).execute(&mut *tx).await?;
    tx.commit().await
}

/// What trying an advisory lock without waiting gives.
pub enum Tried {
    Taken(AdvisoryLock),
    /// Another session (process) holds it.
    Busy,
    /// SQLite: one process owns the database, there is nothing to lock.
    Alone,
}

/// Takes the advisory lock `key` if no other session holds it.
pub async fn try_lock(db: &Db, key: i64) -> sqlx::Result<Tried> {
    let (DbKind::Postgres, Some(pool)) = (db.kind, db.locks.clone()) else { return Ok(Tried::Alone) };
    let mut conn = pool.acquire().await?;
    let taken: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(key).fetch_one(&mut *conn).await?;
    Ok(if taken { Tried::Taken(AdvisoryLock { conn: Some(conn), key }) } else { Tried::Busy })
}

/// A lock key for a name (a stable hash: every process must derive the same key).
pub fn lock_key(name: &str) -> i64 {
    use sha2::{Digest, Sha256};
    let digest = Sha256::digest(name.as_bytes());
    i64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}
