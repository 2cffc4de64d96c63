//! The queue of work for application services (`appservice_outbox`).

use super::script::Script;
use super::{Db, Tx};

/// Something queued for an appservice.
pub enum Item<'a> {
    /// An event ID.
    Event(&'a str),
    /// An ephemeral event (JSON).
    Ephemeral(&'a str),
    /// A to-device message (JSON).
    ToDevice(&'a str),
}

pub async fn queue(tx: &mut Tx, appservice_id: &str, item: Item<'_>) -> sqlx::Result<()> {
    let (column, value) = match item {
        Item::Event(v) => ("event_id", v),
        Item::Ephemeral(v) => ("ephemeral", v),
        Item::ToDevice(v) => ("to_device", v),
    };
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "INSERT INTO appservice_outbox (appservice_id, {column}) VALUES ($1, $2)"
    )))
    .bind(appservice_id)
    .bind(value)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Queues an event for some appservices, in the script that appends it.
pub fn queue_event_in_script(script: &mut Script, appservice_ids: &[&str], event_id: &str) {
    if appservice_ids.is_empty() {
        return;
    }
    let event_id = script.arg(event_id);
    let rows: Vec<String> = appservice_ids.iter().map(|id| format!("({}, {event_id})", script.arg(*id))).collect();
    script.push(format!("INSERT INTO appservice_outbox (appservice_id, event_id) VALUES {}", rows.join(", ")));
}

/// One queued item: an event ID, an ephemeral event or a to-device message.
#[derive(sqlx::FromRow)]
pub struct Queued {
    pub event_id: Option<String>,
    pub ephemeral: Option<String>,
    pub to_device: Option<String>,
}

/// The appservice's next transaction: the one already started if a send failed, else a new
/// one of up to `limit` of the oldest queued items. None when nothing is queued.
pub async fn next_transaction(db: &Db, appservice_id: &str, limit: i64) -> sqlx::Result<Option<(i64, Vec<Queued>)>> {
    let mut tx = db.begin().await?;
    let started: Option<i64> =
        sqlx::query_scalar("SELECT MIN(txn_id) FROM appservice_outbox WHERE appservice_id = $1 AND txn_id IS NOT NULL")
            .bind(appservice_id)
            .fetch_one(&mut *tx)
            .await?;
    let txn_id = match started {
        Some(id) => id,
        None => {
            let ids: Vec<i64> =
                sqlx::query_scalar("SELECT id FROM appservice_outbox WHERE appservice_id = $1 ORDER BY id LIMIT $2")
                    .bind(appservice_id)
                    .bind(limit)
                    .fetch_all(&mut *tx)
                    .await?;
            let (Some(first), Some(last)) = (ids.first(), ids.last()) else { return Ok(None) };
            sqlx::query("UPDATE appservice_outbox SET txn_id = $1 WHERE appservice_id = $2 AND id BETWEEN $1 AND $3")
                .bind(first)
                .bind(appservice_id)
                .bind(last)
                .execute(&mut *tx)
                .await?;
            *first
        }
    };
    let items = sqlx::query_as(
        "SELECT event_id, ephemeral, to_device FROM appservice_outbox WHERE appservice_id = $1 AND txn_id = $2 ORDER BY id",
    )
    .bind(appservice_id)
    .bind(txn_id)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some((txn_id, items)))
}

/// Removes a transaction the appservice accepted.
pub async fn transaction_done(db: &Db, appservice_id: &str, txn_id: i64) -> sqlx::Result<()> {
    let mut tx = db.begin().await?;
    sqlx::query("DELETE FROM appservice_outbox WHERE appservice_id = $1 AND txn_id = $2")
        .bind(appservice_id)
        .bind(txn_id)
        .execute(&mut *tx)
        .await?;
    tx.commit().await
}

/// Appservices with queued work.
pub async fn queued_appservices(db: &Db) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT appservice_id FROM appservice_outbox").fetch_all(db.read()).await
}
