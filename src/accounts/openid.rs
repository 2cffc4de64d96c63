//! OpenID tokens: a user proves who they are to another service (a widget, an integration
//! manager), which asks this server with the token (`/_matrix/federation/v1/openid/userinfo`).
//! They are good for nothing else.

use ruma::UserId;

use super::tokens;
use crate::Services;
use crate::error::Result;
use crate::storage::{self, now_ms};

/// How long a token is valid, in seconds (Synapse's default).
pub const LIFETIME_SECS: i64 = 3600;

/// A new token for the user.
pub async fn issue(svc: &Services, user: &UserId) -> Result<String> {
    let token = tokens::generate();
    let now = now_ms();
    let mut tx = svc.db.begin().await?;
    storage::openid::insert(&mut tx, &tokens::hash(&token), user.as_str(), now + LIFETIME_SECS * 1000, now).await?;
    tx.commit().await?;
    Ok(token)
}

/// The user a token was issued to, while it is valid.
pub async fn owner(svc: &Services, token: &str) -> Result<Option<String>> {
    Ok(storage::openid::owner(&svc.db, &tokens::hash(token), now_ms()).await?)
}
