//! OpenID tokens, by the SHA-256 hash of the token.

use super::{Db, Tx};

/// Stores a token and drops the expired ones (they are only ever looked up by hash).
pub async fn insert(tx: &mut Tx, token_hash: &str, user_id: &str, expires_ts: i64, now: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM openid_tokens WHERE expires_ts <= $1").bind(now).execute(&mut **tx).await?;
    sqlx::query("INSERT INTO openid_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_ts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// The owner of an unexpired token.
pub async fn owner(db: &Db, token_hash: &str, now: i64) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT user_id FROM openid_tokens WHERE token_hash = $1 AND expires_ts > $2")
        .bind(token_hash)
        .bind(now)
        .fetch_optional(db.read())
        .await
}
