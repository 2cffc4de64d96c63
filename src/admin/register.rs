//! Shared-secret registration (`/_synapse/admin/v1/register`), exactly as Synapse does it:
//! the client fetches a nonce, then proves it knows the secret with
//! HMAC-SHA1(secret, nonce NUL username NUL password NUL "admin"|"notadmin" [NUL user_type]).
//! Nonces are single-use and expire after a minute.

use axum::http::StatusCode;
use hmac::{Hmac, Mac};
use rand::Rng;
use sha1::Sha1;

use crate::Services;
use crate::accounts::{self, Session};
use crate::error::{Error, Result};
use crate::storage::{self, now_ms};

const NONCE_LIFETIME_MS: i64 = 60_000;

/// The secret, or 400 when shared-secret registration is not configured (as Synapse says).
fn secret(svc: &Services) -> Result<&str> {
    svc.config
        .registration
        .shared_secret
        .as_deref()
        .ok_or_else(|| Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "Shared secret registration is not enabled"))
}

/// A nonce, stored so that any process of the database accepts it.
pub async fn new_nonce(svc: &Services) -> Result<String> {
    secret(svc)?;
    let nonce: String =
        rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(32).map(char::from).collect();
    let now = now_ms();
    let mut tx = svc.db.begin().await?;
    storage::cluster::issue_nonce(&mut tx, &nonce, now, now - NONCE_LIFETIME_MS).await?;
    tx.commit().await?;
    Ok(nonce)
}

/// Consumes a nonce; false when it was never issued, already used, or expired.
async fn take_nonce(svc: &Services, nonce: &str) -> Result<bool> {
    let mut tx = svc.db.begin().await?;
    let taken = storage::cluster::take_nonce(&mut tx, nonce, now_ms() - NONCE_LIFETIME_MS).await?;
    tx.commit().await?;
    Ok(taken)
}

/// A shared-secret registration request.
pub struct Request<'a> {
    pub nonce: &'a str,
    pub username: &'a str,
    pub password: &'a str,
    pub displayname: Option<&'a str>,
    pub admin: bool,
    pub user_type: Option<&'a str>,
    /// Hex-encoded HMAC-SHA1.
    pub mac: &'a str,
}

/// Checks the nonce and the MAC, creates the account and logs it in.
pub async fn register(svc: &Services, req: Request<'_>) -> Result<Session> {
    let secret = secret(svc)?;
    if !take_nonce(svc, req.nonce).await? {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "Unrecognised nonce"));
    }
    if req.password.len() > 512 {
        return Err(Error::invalid_param("Invalid password"));
    }
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).map_err(|e| Error::Internal(e.into()))?;
    mac.update(req.nonce.as_bytes());
    mac.update(b"\0");
    mac.update(req.username.as_bytes());
    mac.update(b"\0");
    mac.update(req.password.as_bytes());
    mac.update(b"\0");
    mac.update(if req.admin { b"admin" } else { b"notadmin" });
    if let Some(user_type) = req.user_type {
        mac.update(b"\0");
        mac.update(user_type.as_bytes());
    }
    // `verify_slice` compares in constant time.
    let given = hex::decode(req.mac).map_err(|_| Error::forbidden("HMAC incorrect"))?;
    mac.verify_slice(&given).map_err(|_| Error::forbidden("HMAC incorrect"))?;

    let user_id = accounts::validate_new_localpart(req.username, svc.config.server_name.as_str())?;
    accounts::create_account(&svc.db, &user_id, Some(req.password), req.admin, false, None).await?;
    if let Some(name) = req.displayname {
        let mut tx = svc.db.begin().await?;
        crate::storage::users::set_displayname(&mut tx, user_id.as_str(), Some(name)).await?;
        tx.commit().await?;
    }
    tracing::info!(%user_id, admin = req.admin, "registered with the shared secret");
    accounts::open_session(svc, &user_id, None, None, false).await
}
