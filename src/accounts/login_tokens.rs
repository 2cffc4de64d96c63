//! Login tokens (`m.login.token`): what a single sign-on hands the client, exchanged once
//! at `POST /login` for a session, within two minutes.

use ruma::{OwnedUserId, UserId};

use super::tokens;
use crate::error::{Error, Result};
use crate::storage::{self, Db, now_ms};

/// How long a login token is valid, in milliseconds.
pub const LIFETIME_MS: i64 = 2 * 60 * 1000;

/// A new login token for the user.
pub async fn issue(db: &Db, user: &UserId) -> Result<String> {
    let token = tokens::generate();
    let now = now_ms();
    let mut tx = db.begin().await?;
    storage::sso::insert_login_token(&mut tx, &tokens::hash(&token), user.as_str(), now + LIFETIME_MS, now).await?;
    tx.commit().await?;
    Ok(token)
}

/// The user of a login token, which is used up; 403 `M_FORBIDDEN` for an unknown, used or
/// expired token.
pub async fn redeem(db: &Db, token: &str) -> Result<OwnedUserId> {
    let mut tx = db.begin().await?;
    let user = storage::sso::take_login_token(&mut tx, &tokens::hash(token), now_ms()).await?;
    tx.commit().await?;
    let user = user.ok_or_else(|| Error::forbidden("Invalid or expired login token"))?;
    OwnedUserId::try_from(user).map_err(|e| Error::Internal(e.into()))
}
