//! Federation: other servers' signing keys and key responses, the outbound queue, and the
//! retry state of destinations.

use sqlx::Row;

use super::script::Script;
use super::{Db, Tx};

/// A stored signing key of another server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningKey {
    pub key_id: String,
    /// Unpadded base64.
    pub public_key: String,
    pub valid_until_ts: i64,
    /// From `old_verify_keys`: valid for events only, never for requests.
    pub old: bool,
}

pub async fn signing_keys(db: &Db, server_name: &str) -> sqlx::Result<Vec<SigningKey>> {
    let rows = sqlx::query(
        "SELECT key_id, public_key, valid_until_ts, old FROM server_signing_keys
         WHERE server_name = $1 ORDER BY key_id",
    )
    .bind(server_name)
    .fetch_all(db.read())
    .await?;
    rows.iter()
        .map(|r| {
            Ok(SigningKey {
                key_id: r.try_get("key_id")?,
                public_key: r.try_get("public_key")?,
                valid_until_ts: r.try_get("valid_until_ts")?,
                old: r.try_get::<i64, _>("old")? != 0,
            })
        })
        .collect()
}

/// Stores the keys of one verified key response and the response itself.
pub async fn store_key_response(
    tx: &mut Tx,
    server_name: &str,
    keys: &[SigningKey],
    response_json: &str,
    valid_until_ts: i64,
    fetched_ts: i64,
) -> sqlx::Result<()> {
    for key in keys {
        sqlx::query(
            "INSERT INTO server_signing_keys (server_name, key_id, public_key, valid_until_ts, old, fetched_ts)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (server_name, key_id) DO UPDATE SET public_key = EXCLUDED.public_key,
                 valid_until_ts = EXCLUDED.valid_until_ts, old = EXCLUDED.old, fetched_ts = EXCLUDED.fetched_ts",
        )
        .bind(server_name)
        .bind(&key.key_id)
        .bind(&key.public_key)
        .bind(key.valid_until_ts)
        .bind(key.old as i64)
        .bind(fetched_ts)
        .execute(&mut **tx)
        .await?;
    }
    sqlx::query(
        "INSERT INTO server_key_responses (server_name, response_json, valid_until_ts, fetched_ts)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (server_name) DO UPDATE SET response_json = EXCLUDED.response_json,
             valid_until_ts = EXCLUDED.valid_until_ts, fetched_ts = EXCLUDED.fetched_ts",
    )
    .bind(server_name)
    .bind(response_json)
    .bind(valid_until_ts)
    .bind(fetched_ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A server's last key response as it signed it.
#[derive(Debug, Clone)]
pub struct KeyResponse {
    pub response_json: String,
    pub valid_until_ts: i64,
    pub fetched_ts: i64,
}

pub async fn key_response(db: &Db, server_name: &str) -> sqlx::Result<Option<KeyResponse>> {
    let row = sqlx::query(
        "SELECT response_json, valid_until_ts, fetched_ts FROM server_key_responses WHERE server_name = $1",
    )
    .bind(server_name)
    .fetch_optional(db.read())
    .await?;
    row.map(|r| {
        Ok(KeyResponse {
            response_json: r.try_get("response_json")?,
            valid_until_ts: r.try_get("valid_until_ts")?,
            fetched_ts: r.try_get("fetched_ts")?,
        })
    })
    .transpose()
}

/// One queued item: a PDU (by event ID) or an EDU (JSON).
#[derive(Debug, Clone)]
pub struct Queued {
    pub id: i64,
    pub event_id: Option<String>,
    pub edu_json: Option<String>,
}

/// Queues a PDU for some destinations, in one statement.
pub async fn enqueue_pdu(tx: &mut Tx, destinations: &[&str], event_id: &str, now: i64) -> sqlx::Result<()> {
    if destinations.is_empty() {
        return Ok(());
    }
    let placeholders: Vec<String> = (0..destinations.len()).map(|i| format!("${}", i + 3)).collect();
    let sql = enqueue_pdu_statement("$1", "$2", &placeholders);
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(event_id).bind(now);
    for destination in destinations {
        query = query.bind(*destination);
    }
    query.execute(&mut **tx).await?;
    Ok(())
}

/// `enqueue_pdu` in an append's script.
pub fn enqueue_pdu_in_script(script: &mut Script, destinations: &[&str], event_id: &str, now: i64) {
    if destinations.is_empty() {
        return;
    }
    let (event_id, now) = (script.arg(event_id), script.arg(now));
    let placeholders: Vec<String> = destinations.iter().map(|d| script.arg(*d)).collect();
    script.push(enqueue_pdu_statement(&event_id, &now, &placeholders));
}

/// Queues an event for some servers (placeholders).
fn enqueue_pdu_statement(event_id: &str, now: &str, destinations: &[String]) -> String {
    let rows: Vec<String> = destinations.iter().map(|d| format!("({d}, {event_id}, {now})")).collect();
    format!("INSERT INTO federation_outbox (destination, event_id, queued_ts) VALUES {}", rows.join(", "))
}

pub async fn enqueue_edu(tx: &mut Tx, destination: &str, edu_json: &str, now: i64) -> sqlx::Result<()> {
    sqlx::query("INSERT INTO federation_outbox (destination, edu_json, queued_ts) VALUES ($1, $2, $3)")
        .bind(destination)
        .bind(edu_json)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The oldest queued PDUs (at most `pdu_limit`) and EDUs (at most `edu_limit`) of a destination.
pub async fn next_batch(db: &Db, destination: &str, pdu_limit: i64, edu_limit: i64) -> sqlx::Result<Vec<Queued>> {
    let mut items = Vec::new();
    for (kind, limit) in [("event_id", pdu_limit), ("edu_json", edu_limit)] {
        let sql = format!(
            "SELECT id, event_id, edu_json FROM federation_outbox
             WHERE destination = $1 AND {kind} IS NOT NULL ORDER BY id LIMIT $2"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql)).bind(destination).bind(limit).fetch_all(db.read()).await?;
        for r in rows {
            items.push(Queued {
                id: r.try_get("id")?,
                event_id: r.try_get("event_id")?,
                edu_json: r.try_get("edu_json")?,
            });
        }
    }
    Ok(items)
}

/// Removes delivered (or undeliverable) items.
pub async fn dequeue(db: &Db, ids: &[i64]) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    for id in ids {
        sqlx::query("DELETE FROM federation_outbox WHERE id = $1").bind(id).execute(&mut *tx).await?;
    }
    tx.commit().await
}

/// Destinations with queued items.
pub async fn queued_destinations(db: &Db) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT destination FROM federation_outbox").fetch_all(db.read()).await
}

/// (consecutive failures, retry time) of the destinations that are failing.
pub async fn failing_destinations(db: &Db) -> sqlx::Result<Vec<(String, i64, i64)>> {
    sqlx::query_as("SELECT destination, failures, retry_at_ts FROM federation_destinations").fetch_all(db.read()).await
}

/// Records a failure (`failures` > 0) or, with `failures` = 0, that the destination is up.
pub async fn set_destination_state(db: &Db, destination: &str, failures: i64, retry_at_ts: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    if failures == 0 {
        sqlx::query("DELETE FROM federation_destinations WHERE destination = $1")
            .bind(destination)
            .execute(&mut *tx)
            .await?;
    } else {
        sqlx::query(
            "INSERT INTO federation_destinations (destination, failures, retry_at_ts) VALUES ($1, $2, $3)
             ON CONFLICT (destination) DO UPDATE SET failures = EXCLUDED.failures, retry_at_ts = EXCLUDED.retry_at_ts",
        )
        .bind(destination)
        .bind(failures)
        .bind(retry_at_ts)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await
}

/// How long the answers to received transactions are kept (a sender retries a lost answer
/// within minutes; Synapse keeps them a day too).
const INBOUND_TXN_KEEP_MS: i64 = 24 * 3600 * 1000;

/// The answer given to a transaction already received from `origin`.
pub async fn inbound_txn(db: &Db, origin: &str, txn_id: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT response_json FROM federation_inbound_txns WHERE origin = $1 AND txn_id = $2")
        .bind(origin)
        .bind(txn_id)
        .fetch_optional(db.read())
        .await
}

/// Records the answer to a received transaction (a concurrent retry that finished first
/// keeps its own), and forgets the answers older than a day.
pub async fn put_inbound_txn(db: &Db, origin: &str, txn_id: &str, response_json: &str, now: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM federation_inbound_txns WHERE received_ts < $1")
        .bind(now - INBOUND_TXN_KEEP_MS)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO federation_inbound_txns (origin, txn_id, response_json, received_ts) VALUES ($1, $2, $3, $4)
         ON CONFLICT (origin, txn_id) DO NOTHING",
    )
    .bind(origin)
    .bind(txn_id)
    .bind(response_json)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    tx.commit().await
}
