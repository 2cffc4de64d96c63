//! Accounts as admins manage them: create or modify in one call (`PUT /v2/users/{id}`),
//! flags (shadow-ban, lock, suspend), logging in as a user.

use axum::http::StatusCode;
use rand::Rng;
use ruma::{OwnedEventId, UserId};

use crate::Services;
use crate::accounts::{self, Session};
use crate::error::{Error, Result};
use crate::storage::{self, users::Flag, users::UserRow};

/// The local account of `user_id`, or 404 (400 for another server's user, as Synapse).
pub async fn local_user(svc: &Services, user_id: &UserId) -> Result<UserRow> {
    ensure_local(svc, user_id)?;
    storage::users::get(&svc.db, user_id.as_str()).await?.ok_or_else(|| Error::not_found("User not found"))
}

pub fn ensure_local(svc: &Services, user_id: &UserId) -> Result<()> {
    if user_id.server_name() != svc.config.server_name.as_str() {
        return Err(Error::invalid_param("User does not belong to the local server"));
    }
    Ok(())
}

/// What `PUT /v2/users/{id}` asks for; `None` leaves a field as it is.
#[derive(Debug, Default)]
pub struct Changes {
    pub password: Option<String>,
    pub logout_devices: bool,
    pub displayname: Option<Option<String>>,
    pub avatar_url: Option<Option<String>>,
    pub admin: Option<bool>,
    pub deactivated: Option<bool>,
    pub locked: Option<bool>,
}

/// Creates the account with `changes` applied, or modifies it; true when it was created.
pub async fn create_or_modify(svc: &Services, user_id: &UserId, changes: Changes) -> Result<bool> {
    ensure_local(svc, user_id)?;
    let existing = storage::users::get(&svc.db, user_id.as_str()).await?;
    let created = existing.is_none();
    match &existing {
        None => {
            let admin = changes.admin.unwrap_or(false);
            accounts::create_account(&svc.db, user_id, changes.password.as_deref(), admin, false, None).await?;
        }
        Some(user) => {
            if user.deactivated && changes.deactivated == Some(false) {
                let Some(password) = &changes.password else {
                    return Err(Error::matrix(
                        StatusCode::BAD_REQUEST,
                        "M_UNKNOWN",
                        "Must provide a password to re-activate an account.",
                    ));
                };
                let mut tx = svc.db.begin().await?;
                storage::users::reactivate(&mut tx, user_id.as_str()).await?;
                tx.commit().await?;
                svc.token_cache.forget_user(user_id);
                let erased = crate::cluster::Message::Erased { user: user_id.to_owned(), erased: false };
                crate::cluster::publish(svc, erased).await;
                accounts::change_password(svc, user_id, password, None).await?;
            } else if let Some(password) = &changes.password {
                // `Some("")` keeps no device: every session of the user ends.
                let keep = changes.logout_devices.then_some("");
                accounts::change_password(svc, user_id, password, keep).await?;
            }
        }
    }
    // Profile changes reach the user's rooms as member events, as the user's own would.
    if let Some(name) = &changes.displayname {
        accounts::profile::set(svc, user_id, "displayname", name.as_deref()).await?;
    }
    if let Some(url) = &changes.avatar_url {
        accounts::profile::set(svc, user_id, "avatar_url", url.as_deref()).await?;
    }
    let mut tx = svc.db.begin().await?;
    if let (Some(admin), false) = (changes.admin, created) {
        storage::users::set_admin(&mut tx, user_id.as_str(), admin).await?;
    }
    if let Some(locked) = changes.locked {
        storage::users::set_flag(&mut tx, user_id.as_str(), Flag::Locked, locked).await?;
    }
    tx.commit().await?;
    svc.token_cache.forget_user(user_id);
    let was_active = existing.as_ref().is_none_or(|u| !u.deactivated);
    if changes.deactivated == Some(true) && was_active {
        accounts::deactivate(svc, user_id, false).await?;
    }
    Ok(created)
}

/// Sets an account flag of a local user (404 when unknown).
pub async fn set_flag(svc: &Services, user_id: &UserId, flag: Flag, on: bool) -> Result<()> {
    local_user(svc, user_id).await?;
    let mut tx = svc.db.begin().await?;
    storage::users::set_flag(&mut tx, user_id.as_str(), flag, on).await?;
    tx.commit().await?;
    svc.token_cache.forget_user(user_id);
    Ok(())
}

/// An access token for another user (`POST /v1/users/{id}/login`), on a new device, valid
/// until `valid_until_ms` when given.
pub async fn login_as(
    svc: &Services,
    admin: &UserId,
    user_id: &UserId,
    valid_until_ms: Option<i64>,
) -> Result<Session> {
    if admin == user_id {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "Cannot use admin API to login as self"));
    }
    let user = local_user(svc, user_id).await?;
    if user.deactivated {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "The user is deactivated"));
    }
    if valid_until_ms.is_some_and(|ts| ts <= storage::now_ms()) {
        return Err(Error::invalid_param("valid_until_ms is in the past"));
    }
    accounts::open_session_until(&svc.db, user_id, valid_until_ms).await
}

/// What a shadow-banned user is told their event is: a well-formed ID of no event.
pub fn shadow_event_id() -> OwnedEventId {
    let id: String =
        rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(43).map(char::from).collect();
    OwnedEventId::try_from(format!("${id}")).expect("a valid event ID")
}

/// Locks or suspends a local account as the spec's `/_matrix/client/v1/admin` endpoints
/// require: 400 for a remote user, 404 for an unknown or deactivated one, 403 for an admin.
pub async fn moderate(svc: &Services, user_id: &UserId, flag: Flag, on: bool) -> Result<()> {
    let user = spec_target(svc, user_id).await?;
    if user.is_admin {
        return Err(Error::forbidden("Cannot lock or suspend a server admin"));
    }
    set_flag(svc, user_id, flag, on).await
}

/// A local, active account the spec's admin endpoints may look at.
pub async fn spec_target(svc: &Services, user_id: &UserId) -> Result<UserRow> {
    let user = local_user(svc, user_id).await?;
    if user.deactivated {
        return Err(Error::not_found("User not found"));
    }
    Ok(user)
}
