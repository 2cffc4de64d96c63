//! Accounts: registration, passwords, login sessions (devices and tokens), identities.

pub mod directory;
pub mod login_tokens;
pub mod openid;
pub mod password;
pub mod presence;
pub mod profile;
pub mod sessions;
pub mod token_cache;
pub mod tokens;
pub mod uia;

use std::sync::Arc;

use rand::Rng;
use ruma::events::TimelineEventType;
use ruma::{OwnedUserId, RoomId, UserId};
use serde_json::json;

use crate::Services;
use crate::appservice::Appservice;
use crate::error::{Error, Result};
use crate::rooms;
use crate::storage::{self, Db};

/// Who is making an authenticated request.
#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: OwnedUserId,
    /// Empty for an application service acting without a device.
    pub device_id: String,
    pub is_admin: bool,
    pub is_guest: bool,
    /// Their events get fake IDs and go nowhere (an admin's decision; see `admin::users`).
    pub shadow_banned: bool,
    /// Every request but logout answers `M_USER_LOCKED`.
    pub locked: bool,
    /// Writes (joins, messages, profile changes) answer `M_USER_SUSPENDED`.
    pub suspended: bool,
    /// The application service whose as_token authenticated the request.
    pub appservice: Option<Arc<Appservice>>,
}

impl Identity {
    /// Refuses an action a suspended account may not take (spec "Account suspension").
    pub fn ensure_not_suspended(&self) -> Result<()> {
        if self.suspended {
            return Err(Error::user_suspended());
        }
        Ok(())
    }
}

/// Tokens handed out at login, registration or refresh.
#[derive(Debug, Clone)]
pub struct Session {
    pub user_id: OwnedUserId,
    pub device_id: String,
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in_ms: Option<i64>,
}

/// Lifetime of an access token that comes with a refresh token.
pub const REFRESHABLE_TOKEN_LIFETIME_MS: i64 = 5 * 60 * 1000;

/// Checks a localpart chosen at registration: the spec's lowercase grammar, and that the
/// whole user ID fits in 255 bytes.
pub fn validate_new_localpart(localpart: &str, server_name: &str) -> Result<OwnedUserId> {
    if localpart.is_empty() {
        return Err(Error::invalid_username("User ID cannot be empty"));
    }
    if !localpart.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'_' | b'=' | b'-' | b'/' | b'+')) {
        return Err(Error::invalid_username("User ID may contain only a-z, 0-9, and . _ = - / +"));
    }
    if localpart.len() + server_name.len() + 2 > 255 {
        return Err(Error::invalid_username("User ID is too long"));
    }
    UserId::parse(format!("@{localpart}:{server_name}"))
        .map_err(|e| Error::invalid_username(format!("Invalid user ID: {e}")))
}

/// Parses the `user` of a login identifier: a full user ID or a localpart of this server.
pub fn parse_login_user(user: &str, server_name: &str) -> Option<OwnedUserId> {
    let full = if user.starts_with('@') { user.to_owned() } else { format!("@{}:{server_name}", user.to_lowercase()) };
    UserId::parse(full).ok()
}

/// A random device ID of ten upper-case letters, as Synapse makes.
pub fn random_device_id() -> String {
    let mut rng = rand::thread_rng();
    (0..10).map(|_| (b'A' + rng.gen_range(0..26)) as char).collect()
}

/// Checks a registration token chosen by an administrator: the spec's opaque identifier
/// grammar, at most 64 characters.
pub fn validate_registration_token(token: &str) -> Result<()> {
    let grammar = token.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'));
    if token.is_empty() || token.len() > 64 || !grammar {
        return Err(Error::invalid_param("A registration token has 1 to 64 characters from A-Z a-z 0-9 - . _ ~"));
    }
    Ok(())
}

/// A new random registration token of `length` letters and digits.
pub fn random_registration_token(length: usize) -> String {
    rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(length).map(char::from).collect()
}

/// Creates an account in the database (no login).
pub async fn create_account(
    db: &Db,
    user_id: &UserId,
    password: Option<&str>,
    is_admin: bool,
    is_guest: bool,
    registration_token: Option<&str>,
) -> Result<()> {
    let hash = match password {
        Some(p) => Some(password::hash(p).await?),
        None => None,
    };
    let mut tx = db.begin().await?;
    let created =
        storage::users::create(&mut tx, user_id.as_str(), hash.as_deref(), user_id.localpart(), is_admin, is_guest)
            .await?;
    if !created {
        return Err(Error::user_in_use());
    }
    if let Some(token) = registration_token {
        storage::registration_tokens::mark_used(&mut tx, token).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// Opens a login session: the device (new or existing) and its tokens.
pub async fn open_session(
    svc: &Services,
    user_id: &UserId,
    device_id: Option<String>,
    device_display_name: Option<&str>,
    with_refresh_token: bool,
) -> Result<Session> {
    let device_id = device_id.filter(|d| !d.is_empty()).unwrap_or_else(random_device_id);
    let access_token = tokens::generate();
    let refresh_token = with_refresh_token.then(tokens::generate);
    let expires_in_ms = with_refresh_token.then_some(REFRESHABLE_TOKEN_LIFETIME_MS);
    let mut tx = svc.db.begin().await?;
    storage::devices::upsert(&mut tx, user_id.as_str(), &device_id, device_display_name).await?;
    // A login that reuses a device ID replaces that device's session.
    storage::devices::delete_tokens(&mut tx, user_id.as_str(), &device_id).await?;
    storage::devices::add_access_token(
        &mut tx,
        &tokens::hash(&access_token),
        user_id.as_str(),
        &device_id,
        expires_in_ms.map(|ms| storage::now_ms() + ms),
    )
    .await?;
    if let Some(rt) = &refresh_token {
        storage::devices::add_refresh_token(&mut tx, &tokens::hash(rt), user_id.as_str(), &device_id).await?;
    }
    tx.commit().await?;
    svc.token_cache.forget_user(user_id);
    // The device ID may be that of a deleted device, whose key status may still be cached.
    svc.key_status.forget_user(user_id);
    Ok(Session { user_id: user_id.to_owned(), device_id, access_token, refresh_token, expires_in_ms })
}

/// A session on a new device for someone else than its user (an admin logging in as them):
/// no refresh token; the access token expires at `expires_ts` when given.
pub async fn open_session_until(db: &Db, user_id: &UserId, expires_ts: Option<i64>) -> Result<Session> {
    let device_id = random_device_id();
    let access_token = tokens::generate();
    let mut tx = db.begin().await?;
    storage::devices::upsert(&mut tx, user_id.as_str(), &device_id, None).await?;
    storage::devices::add_access_token(&mut tx, &tokens::hash(&access_token), user_id.as_str(), &device_id, expires_ts)
        .await?;
    tx.commit().await?;
    let expires_in_ms = expires_ts.map(|ts| ts - storage::now_ms());
    Ok(Session { user_id: user_id.to_owned(), device_id, access_token, refresh_token: None, expires_in_ms })
}

/// Exchanges a refresh token for a new access token and refresh token. The device's other
/// tokens end (the previous access token, and whatever an earlier answer to this same refresh
/// handed out if the client never received it); the used refresh token stays valid until the
/// new access token or refresh token is used, so that a lost answer can be fetched again.
pub async fn refresh(svc: &Services, refresh_token: &str) -> Result<Session> {
    let used_hash = tokens::hash(refresh_token);
    let mut tx = svc.db.begin().await?;
    let Some((user_id, device_id)) = storage::devices::take_refresh_token(&mut tx, &used_hash).await? else {
        return Err(Error::unknown_token(false));
    };
    let user_id = OwnedUserId::try_from(user_id).map_err(|e| Error::Internal(e.into()))?;
    storage::devices::delete_tokens(&mut tx, user_id.as_str(), &device_id).await?;
    storage::devices::add_refresh_token(&mut tx, &used_hash, user_id.as_str(), &device_id).await?;
    let access_token = tokens::generate();
    let access_hash = tokens::hash(&access_token);
    let new_refresh = tokens::generate();
    storage::devices::add_access_token(
        &mut tx,
        &access_hash,
        user_id.as_str(),
        &device_id,
        Some(storage::now_ms() + REFRESHABLE_TOKEN_LIFETIME_MS),
    )
    .await?;
    storage::devices::add_refresh_token(&mut tx, &tokens::hash(&new_refresh), user_id.as_str(), &device_id).await?;
    // Recorded before the commit, so that even the first use of the new token revokes the old one.
    svc.sessions.supersede(&user_id, &device_id, access_hash, used_hash);
    tx.commit().await?;
    svc.token_cache.forget_user(&user_id);
    Ok(Session {
        user_id,
        device_id,
        access_token,
        refresh_token: Some(new_refresh),
        expires_in_ms: Some(REFRESHABLE_TOKEN_LIFETIME_MS),
    })
}

/// Resolves an access token to its owner (from `token_cache`, else the database). The first
/// use of a refreshed access token revokes the refresh token it was obtained with.
pub async fn authenticate(svc: &Services, access_token: &str) -> Result<Identity> {
    let access_hash = tokens::hash(access_token);
    let resolved = match svc.token_cache.get(&access_hash) {
        Some(resolved) => resolved,
        None => {
            let epoch = svc.token_cache.epoch();
            let resolved = resolve(&svc.db, &access_hash).await?;
            svc.token_cache.remember(&access_hash, resolved.clone(), epoch);
            resolved
        }
    };
    if resolved.expires_ts.is_some_and(|e| e <= storage::now_ms()) {
        return Err(Error::unknown_token(true));
    }
    let identity = resolved.identity;
    if resolved.expires_ts.is_some()
        && let Some(superseded) = svc.sessions.take_superseded(&identity.user_id, &identity.device_id, &access_hash)
    {
        let mut tx = svc.db.begin().await?;
        storage::devices::take_refresh_token(&mut tx, &superseded).await?;
        tx.commit().await?;
    }
    Ok(identity)
}

/// Reads a token's owner and their account: 401 `M_UNKNOWN_TOKEN` for an unknown token or a
/// deactivated account.
async fn resolve(db: &Db, access_hash: &str) -> Result<token_cache::Resolved> {
    let Some(owner) = storage::devices::access_token_owner(db, access_hash).await? else {
        return Err(Error::unknown_token(false));
    };
    if owner.expires_ts.is_some_and(|e| e <= storage::now_ms()) {
        return Err(Error::unknown_token(true));
    }
    let Some(user) = storage::users::get(db, &owner.user_id).await? else {
        return Err(Error::unknown_token(false));
    };
    if user.deactivated {
        return Err(Error::unknown_token(false));
    }
    let user_id = OwnedUserId::try_from(owner.user_id).map_err(|e| Error::Internal(e.into()))?;
    let identity = Identity {
        user_id,
        device_id: owner.device_id,
        is_admin: user.is_admin,
        is_guest: user.is_guest,
        shadow_banned: user.shadow_banned,
        locked: user.locked,
        suspended: user.suspended,
        appservice: None,
    };
    Ok(token_cache::Resolved { identity, expires_ts: owner.expires_ts })
}

/// The identity of a request made with an appservice's as_token: its own user, or the user
/// of its namespace named by `?user_id=` (masquerading), on the device named by
/// `?device_id=` (MSC3202) when that is one of the user's.
pub async fn authenticate_appservice(
    db: &Db,
    appservice: &Arc<Appservice>,
    user_id: Option<&str>,
    device_id: Option<&str>,
) -> Result<Identity> {
    let user_id = match user_id {
        None => appservice.sender.clone(),
        Some(u) => OwnedUserId::try_from(u).map_err(|_| Error::invalid_param("user_id is not a user ID"))?,
    };
    if !appservice.is_user(&user_id) {
        return Err(Error::matrix(
            http::StatusCode::FORBIDDEN,
            "M_EXCLUSIVE",
            "The user is not in the application service's namespace",
        ));
    }
    let user = storage::users::get(db, user_id.as_str())
        .await?
        .filter(|u| !u.deactivated)
        .ok_or_else(|| Error::forbidden("The application service has not registered this user"))?;
    let device_id = match device_id {
        None => String::new(),
        Some(d) if storage::devices::get(db, user_id.as_str(), d).await?.is_some() => d.to_owned(),
        Some(_) => return Err(Error::forbidden("The user has no such device")),
    };
    Ok(Identity {
        user_id,
        device_id,
        is_admin: user.is_admin,
        is_guest: user.is_guest,
        shadow_banned: user.shadow_banned,
        locked: user.locked,
        suspended: user.suspended,
        appservice: Some(appservice.clone()),
    })
}

/// Checks a user's password; `Ok(false)` for a wrong password or an unknown or
/// deactivated user.
pub async fn check_password(db: &Db, user_id: &UserId, password: &str) -> Result<bool> {
    let Some(user) = storage::users::get(db, user_id.as_str()).await? else {
        return Ok(false);
    };
    match (&user.password_hash, user.deactivated) {
        (Some(hash), false) => password::verify(password, hash).await,
        _ => Ok(false),
    }
}

/// Sets a new password, optionally logging out every other device.
pub async fn change_password(
    svc: &Services,
    user_id: &UserId,
    new_password: &str,
    keep_device: Option<&str>,
) -> Result<()> {
    let hash = password::hash(new_password).await?;
    let gone: Vec<String> = match keep_device {
        Some(keep) => storage::devices::list(&svc.db, user_id.as_str())
            .await?
            .into_iter()
            .map(|d| d.device_id)
            .filter(|d| d != keep)
            .collect(),
        None => Vec::new(),
    };
    let mut tx = svc.db.begin().await?;
    storage::users::set_password_hash(&mut tx, user_id.as_str(), Some(&hash)).await?;
    if let Some(keep) = keep_device {
        storage::devices::delete_all(&mut tx, user_id.as_str(), Some(keep)).await?;
    }
    tx.commit().await?;
    svc.token_cache.forget_user(user_id);
    crate::e2ee::device_lists::devices_changed(svc, user_id, &gone).await
}

/// Deactivates an account: the user leaves every room, every session, device, key and
/// pusher goes, the password and profile are erased; the user ID stays taken for ever.
/// With `erase`, the user's events are served redacted to users who join later.
pub async fn deactivate(svc: &Services, user_id: &UserId, erase: bool) -> Result<()> {
    let devices: Vec<String> =
        storage::devices::list(&svc.db, user_id.as_str()).await?.into_iter().map(|d| d.device_id).collect();
    // Other servers hear of the devices going while the user still shares rooms with them.
    let mut tx = svc.db.begin().await?;
    storage::users::deactivate(&mut tx, user_id.as_str()).await?;
    storage::devices::delete_all(&mut tx, user_id.as_str(), None).await?;
    storage::cross_signing::delete_all(&mut tx, user_id.as_str()).await?;
    if erase {
        storage::users::set_erased(&mut tx, user_id.as_str()).await?;
    }
    tx.commit().await?;
    svc.token_cache.forget_user(user_id);
    if erase {
        let erased = crate::cluster::Message::Erased { user: user_id.to_owned(), erased: true };
        crate::cluster::publish(svc, erased).await;
    }
    crate::e2ee::device_lists::devices_changed(svc, user_id, &devices).await?;
    leave_all_rooms(svc, user_id).await
}

/// Sends a leave for every room the user is joined to, invited to or knocking on.
pub async fn leave_all_rooms(svc: &Services, user_id: &UserId) -> Result<()> {
    for (room_id, membership) in storage::rooms::memberships_of_user(&svc.db, user_id.as_str()).await? {
        if !matches!(membership.as_str(), "join" | "invite" | "knock") {
            continue;
        }
        let Ok(room_id) = RoomId::parse(&room_id) else { continue };
        let draft =
            rooms::Draft::state(TimelineEventType::RoomMember, user_id.as_str(), json!({ "membership": "leave" }));
        // One room refusing (e.g. its state is broken) must not keep the user in the others.
        if let Err(e) = rooms::send(svc, &room_id, user_id, draft, None).await {
            tracing::warn!(%room_id, %user_id, error = %e, "could not leave the room on deactivation");
        }
    }
    Ok(())
}
