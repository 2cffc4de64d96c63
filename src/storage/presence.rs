//! Presence: each user's latest state, with the stream position of its last change.

use serde_json::{Value, json};
use sqlx::Row;

use super::{Db, Tx, next_stream_pos};

/// A user is shown as currently active within this long of their last activity (as Synapse).
pub const CURRENTLY_ACTIVE_MS: i64 = 60_000;

/// Most users named in one query (bind parameters are limited).
const USERS_PER_QUERY: usize = 500;

#[derive(Debug, Clone)]
pub struct Presence {
    pub user_id: String,
    /// online, unavailable or offline
    pub state: String,
    pub status_msg: Option<String>,
    pub last_active_ts: i64,
}

/// What the presence timers need of a local user not offline.
#[derive(Debug, Clone)]
pub struct Timing {
    pub user_id: String,
    pub state: String,
    pub last_active_ts: i64,
    pub last_sync_ts: i64,
}

impl Presence {
    /// The content of an `m.presence` event as of `now_ms`.
    pub fn content(&self, now_ms: i64) -> Value {
        let mut content = json!({
            "presence": self.state,
            "last_active_ago": (now_ms - self.last_active_ts).max(0),
        });
        if let Some(msg) = &self.status_msg {
            content["status_msg"] = json!(msg);
        }
        if self.state == "online" {
            content["currently_active"] = json!(now_ms - self.last_active_ts < CURRENTLY_ACTIVE_MS);
        }
        content
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Presence> {
    Ok(Presence {
        user_id: r.try_get("user_id")?,
        state: r.try_get("state")?,
        status_msg: r.try_get("status_msg")?,
        last_active_ts: r.try_get("last_active_ts")?,
    })
}

/// Sets a user's presence (active at `now_ms`); returns the change's stream position.
/// `heard_ts`: for a remote user, when their server told us (kept in `last_sync_ts`, which
/// the timers read as "last heard of" for remote users).
pub async fn set(
    tx: &mut Tx,
    user_id: &str,
    state: &str,
    status_msg: Option<&str>,
    now_ms: i64,
    heard_ts: Option<i64>,
) -> sqlx::Result<i64> {
    let pos = next_stream_pos(tx).await?;
    sqlx::query(
        "INSERT INTO presence (user_id, state, status_msg, last_active_ts, stream_pos, last_sync_ts)
         VALUES ($1, $2, $3, $4, $5, COALESCE($6, 0))
         ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, status_msg = EXCLUDED.status_msg,
             last_active_ts = EXCLUDED.last_active_ts, stream_pos = EXCLUDED.stream_pos,
             last_sync_ts = COALESCE($6, presence.last_sync_ts)",
    )
    .bind(user_id)
    .bind(state)
    .bind(status_msg)
    .bind(now_ms)
    .bind(pos)
    .bind(heard_ts)
    .execute(&mut **tx)
    .await?;
    Ok(pos)
}

/// Sets a user's state as a sync that sets presence does, leaving the status message: active
/// now when `active`, and syncing now. Returns the change's stream position.
pub async fn set_by_sync(tx: &mut Tx, user_id: &str, state: &str, active: bool, now_ms: i64) -> sqlx::Result<i64> {
    let pos = next_stream_pos(tx).await?;
    sqlx::query(
        "INSERT INTO presence (user_id, state, last_active_ts, last_sync_ts, stream_pos) VALUES ($1, $2, $3, $3, $4)
         ON CONFLICT (user_id) DO UPDATE SET state = EXCLUDED.state, last_sync_ts = EXCLUDED.last_sync_ts,
             last_active_ts = CASE WHEN $5 THEN EXCLUDED.last_active_ts ELSE presence.last_active_ts END,
             stream_pos = EXCLUDED.stream_pos",
    )
    .bind(user_id)
    .bind(state)
    .bind(now_ms)
    .bind(pos)
    .bind(active)
    .execute(&mut **tx)
    .await?;
    Ok(pos)
}

/// Records that these users synced at `now_ms` (and, `active`, were active then). Not a change
/// others see: no stream position.
pub async fn touch(db: &Db, users: &[String], active: bool, now_ms: i64) -> sqlx::Result<()> {
    if users.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for batch in users.chunks(USERS_PER_QUERY) {
        let placeholders: Vec<String> = (0..batch.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "UPDATE presence SET last_sync_ts = $1,
                 last_active_ts = CASE WHEN $2 THEN $1 ELSE last_active_ts END
             WHERE user_id IN ({})",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(now_ms).bind(active);
        for user in batch {
            query = query.bind(user);
        }
        query.execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Local users (IDs ending in `suffix`, `:server.name`) not offline and not active since
/// `before`: those the presence timers may change.
pub async fn quiet_since(db: &Db, suffix: &str, before: i64) -> sqlx::Result<Vec<Timing>> {
    not_offline(db, "last_active_ts < $1 AND user_id LIKE $2", suffix, before).await
}

/// Remote users (IDs not ending in `suffix`) not offline whose server has said nothing of
/// them since `before`.
pub async fn unheard_since(db: &Db, suffix: &str, before: i64) -> sqlx::Result<Vec<Timing>> {
    not_offline(db, "last_sync_ts < $1 AND user_id NOT LIKE $2", suffix, before).await
}

async fn not_offline(db: &Db, condition: &str, suffix: &str, before: i64) -> sqlx::Result<Vec<Timing>> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT user_id, state, last_active_ts, last_sync_ts FROM presence WHERE state <> 'offline' AND {condition}"
    )))
    .bind(before)
    .bind(format!("%{suffix}"))
    .fetch_all(db.read())
    .await?;
    rows.iter().map(timing_from_row).collect()
}

fn timing_from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<Timing> {
    Ok(Timing {
        user_id: r.try_get("user_id")?,
        state: r.try_get("state")?,
        last_active_ts: r.try_get("last_active_ts")?,
        last_sync_ts: r.try_get("last_sync_ts")?,
    })
}

/// Changes a user's state from `from` to `to` if it is still `from` and neither activity nor a
/// sync was recorded at or after `quiet_since`: the timers change a state only if nothing
/// happened meanwhile (on any process). The change's stream position, or None.
pub async fn time_out(
    tx: &mut Tx,
    user_id: &str,
    from: &str,
    to: &str,
    quiet_since: i64,
    sync_counts: bool,
) -> sqlx::Result<Option<i64>> {
    let pos = next_stream_pos(tx).await?;
    let done = sqlx::query(
        "UPDATE presence SET state = $2, stream_pos = $3
         WHERE user_id = $1 AND state = $4 AND last_active_ts < $5 AND (NOT $6 OR last_sync_ts < $5)",
    )
    .bind(user_id)
    .bind(to)
    .bind(pos)
    .bind(from)
    .bind(quiet_since)
    .bind(sync_counts)
    .execute(&mut **tx)
    .await?;
    Ok((done.rows_affected() == 1).then_some(pos))
}

/// Like `get`, with when the user last synced.
pub async fn timing(db: &Db, user_id: &str) -> sqlx::Result<Option<Timing>> {
    let row = sqlx::query("SELECT user_id, state, last_active_ts, last_sync_ts FROM presence WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db.read())
        .await?;
    row.as_ref().map(timing_from_row).transpose()
}

pub async fn get(db: &Db, user_id: &str) -> sqlx::Result<Option<Presence>> {
    let row = sqlx::query("SELECT user_id, state, status_msg, last_active_ts FROM presence WHERE user_id = $1")
        .bind(user_id)
        .fetch_optional(db.read())
        .await?;
    row.as_ref().map(from_row).transpose()
}

/// The presence of those of `users` whose presence changed at positions in (`after`, `up_to`].
pub async fn changes(db: &Db, users: &[String], after: i64, up_to: i64) -> sqlx::Result<Vec<Presence>> {
    let mut found = Vec::new();
    for batch in users.chunks(USERS_PER_QUERY) {
        let placeholders: Vec<String> = (0..batch.len()).map(|i| format!("${}", i + 3)).collect();
        let sql = format!(
            "SELECT user_id, state, status_msg, last_active_ts FROM presence
             WHERE stream_pos > $1 AND stream_pos <= $2 AND user_id IN ({}) ORDER BY stream_pos",
            placeholders.join(", ")
        );
        let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(after).bind(up_to);
        for user in batch {
            query = query.bind(user);
        }
        for row in query.fetch_all(db.read()).await? {
            found.push(from_row(&row)?);
        }
    }
    Ok(found)
}
