//! Single sign-on: logins in progress, links from a provider's subjects to local users, and
//! login tokens (by the SHA-256 hash of the token).

use sqlx::Row;

use super::{Db, Tx};

/// A login waiting for its provider's answer.
#[derive(Debug, Clone)]
pub struct PendingLogin {
    pub provider_id: String,
    pub nonce: String,
    pub pkce_verifier: String,
    pub purpose: Purpose,
    pub expires_ts: i64,
}

/// What a login at a provider is for.
#[derive(Debug, Clone, PartialEq)]
pub enum Purpose {
    /// Logging in to a client, which gets a login token at this URL.
    Login { redirect_url: String },
    /// Proving who the user is again, for this user-interactive authentication session.
    Reauthenticate { ui_auth_session: String },
}

/// Stores a login in progress under its state, dropping the expired ones.
pub async fn insert_pending(tx: &mut Tx, state: &str, login: &PendingLogin, now: i64) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM sso_sessions WHERE expires_ts <= $1").bind(now).execute(&mut **tx).await?;
    sqlx::query(
        "INSERT INTO sso_sessions (state, provider_id, nonce, pkce_verifier, redirect_url, ui_auth_session, expires_ts)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(state)
    .bind(&login.provider_id)
    .bind(&login.nonce)
    .bind(&login.pkce_verifier)
    .bind(match &login.purpose {
        Purpose::Login { redirect_url } => Some(redirect_url.as_str()),
        Purpose::Reauthenticate { .. } => None,
    })
    .bind(match &login.purpose {
        Purpose::Reauthenticate { ui_auth_session } => Some(ui_auth_session.as_str()),
        Purpose::Login { .. } => None,
    })
    .bind(login.expires_ts)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Removes and returns the login in progress under a state (each state is answered once).
pub async fn take_pending(tx: &mut Tx, state: &str) -> sqlx::Result<Option<PendingLogin>> {
    let row = sqlx::query(
        "DELETE FROM sso_sessions WHERE state = $1
         RETURNING provider_id, nonce, pkce_verifier, redirect_url, ui_auth_session, expires_ts",
    )
    .bind(state)
    .fetch_optional(&mut **tx)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let redirect_url: Option<String> = r.try_get("redirect_url")?;
    let ui_auth_session: Option<String> = r.try_get("ui_auth_session")?;
    let purpose = match (redirect_url, ui_auth_session) {
        (Some(redirect_url), _) => Purpose::Login { redirect_url },
        (None, Some(ui_auth_session)) => Purpose::Reauthenticate { ui_auth_session },
        (None, None) => return Err(sqlx::Error::Decode("an SSO session without a purpose".into())),
    };
    Ok(Some(PendingLogin {
        provider_id: r.try_get("provider_id")?,
        nonce: r.try_get("nonce")?,
        pkce_verifier: r.try_get("pkce_verifier")?,
        purpose,
        expires_ts: r.try_get("expires_ts")?,
    }))
}

/// The local user a provider's subject is linked to.
pub async fn linked_user(db: &Db, provider_id: &str, subject: &str) -> sqlx::Result<Option<String>> {
    sqlx::query_scalar("SELECT user_id FROM user_external_ids WHERE auth_provider = $1 AND external_id = $2")
        .bind(provider_id)
        .bind(subject)
        .fetch_optional(db.read())
        .await
}

/// The providers a user is linked to.
pub async fn providers_of_user(db: &Db, user_id: &str) -> sqlx::Result<Vec<String>> {
    sqlx::query_scalar("SELECT DISTINCT auth_provider FROM user_external_ids WHERE user_id = $1 ORDER BY auth_provider")
        .bind(user_id)
        .fetch_all(db.read())
        .await
}

/// Links a provider's subject to a local user; false if the subject was already linked.
pub async fn link(tx: &mut Tx, provider_id: &str, subject: &str, user_id: &str) -> sqlx::Result<bool> {
    let done = sqlx::query(
        "INSERT INTO user_external_ids (auth_provider, external_id, user_id) VALUES ($1, $2, $3)
         ON CONFLICT (auth_provider, external_id) DO NOTHING",
    )
    .bind(provider_id)
    .bind(subject)
    .bind(user_id)
    .execute(&mut **tx)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Stores a login token, dropping the expired ones.
pub async fn insert_login_token(
    tx: &mut Tx,
    token_hash: &str,
    user_id: &str,
    expires_ts: i64,
    now: i64,
) -> sqlx::Result<()> {
    sqlx::query("DELETE FROM login_tokens WHERE expires_ts <= $1").bind(now).execute(&mut **tx).await?;
    sqlx::query("INSERT INTO login_tokens (token_hash, user_id, expires_ts) VALUES ($1, $2, $3)")
        .bind(token_hash)
        .bind(user_id)
        .bind(expires_ts)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Removes a login token and returns its user, if it had not expired.
pub async fn take_login_token(tx: &mut Tx, token_hash: &str, now: i64) -> sqlx::Result<Option<String>> {
    let row = sqlx::query("DELETE FROM login_tokens WHERE token_hash = $1 RETURNING user_id, expires_ts")
        .bind(token_hash)
        .fetch_optional(&mut **tx)
        .await?;
    let Some(row) = row else { return Ok(None) };
    let expires_ts: i64 = row.try_get("expires_ts")?;
    Ok(if expires_ts > now { Some(row.try_get("user_id")?) } else { None })
}
