//! Registration tokens (`m.login.registration_token`).

use sqlx::Row;

use super::{Db, Tx, now_ms};

#[derive(Debug, Clone)]
pub struct RegistrationToken {
    pub token: String,
    pub uses_allowed: Option<i64>,
    pub pending: i64,
    pub completed: i64,
    pub expiry_ts: Option<i64>,
}

impl RegistrationToken {
    pub fn is_valid(&self) -> bool {
        let unexpired = self.expiry_ts.is_none_or(|e| e > now_ms());
        let uses_left = self.uses_allowed.is_none_or(|n| self.pending + self.completed < n);
        unexpired && uses_left
    }
}

fn from_row(r: &sqlx::any::AnyRow) -> sqlx::Result<RegistrationToken> {
    Ok(RegistrationToken {
        token: r.try_get("token")?,
        uses_allowed: r.try_get("uses_allowed")?,
        pending: r.try_get("pending")?,
        completed: r.try_get("completed")?,
        expiry_ts: r.try_get("expiry_ts")?,
    })
}

pub async fn create(tx: &mut Tx, token: &str, uses_allowed: Option<i64>, expiry_ts: Option<i64>) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "INSERT INTO registration_tokens (token, uses_allowed, expiry_ts) VALUES ($1, $2, $3)
         ON CONFLICT (token) DO NOTHING",
    )
    .bind(token)
    .bind(uses_allowed)
    .bind(expiry_ts)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}

pub async fn get(db: &Db, token: &str) -> sqlx::Result<Option<RegistrationToken>> {
    let row = sqlx::query(
        "SELECT token, uses_allowed, pending, completed, expiry_ts FROM registration_tokens WHERE token = $1",
    )
    .bind(token)
    .fetch_optional(db.read())
    .await?;
    row.as_ref().map(from_row).transpose()
}

pub async fn list(db: &Db) -> sqlx::Result<Vec<RegistrationToken>> {
    let rows = sqlx::query(
        "SELECT token, uses_allowed, pending, completed, expiry_ts FROM registration_tokens ORDER BY token",
    )
    .fetch_all(db.read())
    .await?;
    rows.iter().map(from_row).collect()
}

/// Counts one completed registration with this token.
pub async fn mark_used(tx: &mut Tx, token: &str) -> sqlx::Result<()> {
    sqlx::query("UPDATE registration_tokens SET completed = completed + 1 WHERE token = $1")
        .bind(token)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn delete(tx: &mut Tx, token: &str) -> sqlx::Result<bool> {
    let res = sqlx::query("DELETE FROM registration_tokens WHERE token = $1").bind(token).execute(&mut **tx).await?;
    Ok(res.rows_affected() == 1)
}

/// Changes a token's limits: `None` leaves a field as it is, `Some(None)` removes the limit.
pub async fn update(
    tx: &mut Tx,
    token: &str,
    uses_allowed: Option<Option<i64>>,
    expiry_ts: Option<Option<i64>>,
) -> sqlx::Result<bool> {
    let res = sqlx::query(
        "UPDATE registration_tokens
         SET uses_allowed = CASE WHEN $1 = 1 THEN $2 ELSE uses_allowed END,
             expiry_ts = CASE WHEN $3 = 1 THEN $4 ELSE expiry_ts END
         WHERE token = $5",
    )
    .bind(uses_allowed.is_some() as i64)
    .bind(uses_allowed.flatten())
    .bind(expiry_ts.is_some() as i64)
    .bind(expiry_ts.flatten())
    .bind(token)
    .execute(&mut **tx)
    .await?;
    Ok(res.rows_affected() == 1)
}
