//! Profiles (display name and avatar URL): local users' from the database, other users' from
//! their servers (`GET /_matrix/federation/v1/query/profile`), not cached.

use std::time::Duration;

use axum::http::Method;
use ruma::UserId;
use serde_json::{Map, Value, json};

use crate::Services;
use crate::error::{Error, Result};
use crate::federation::client;
use crate::storage;

/// The profile fields this server keeps.
pub const FIELDS: [&str; 2] = ["displayname", "avatar_url"];
/// How long another server is waited for.
const REMOTE_TIMEOUT: Duration = Duration::from_secs(10);

/// A user's profile: every field, or only `field`. Fields that are not set are absent.
pub async fn get(svc: &Services, user_id: &UserId, field: Option<&str>) -> Result<Map<String, Value>> {
    if user_id.server_name().as_str() == svc.config.server_name {
        local(svc, user_id, field).await
    } else {
        remote(svc, user_id, field).await
    }
}

/// A local user's profile; 404 for unknown or deactivated users.
pub async fn local(svc: &Services, user_id: &UserId, field: Option<&str>) -> Result<Map<String, Value>> {
    let user = match storage::users::get(&svc.db, user_id.as_str()).await? {
        Some(user) if !user.deactivated => user,
        _ => return Err(Error::not_found("Profile not found")),
    };
    let mut profile = Map::new();
    for (name, value) in [("displayname", user.displayname), ("avatar_url", user.avatar_url)] {
        if let Some(value) = value
            && field.is_none_or(|f| f == name)
        {
            profile.insert(name.into(), json!(value));
        }
    }
    Ok(profile)
}

/// A remote user's profile as their server tells it (only the fields kept here, as strings).
async fn remote(svc: &Services, user_id: &UserId, field: Option<&str>) -> Result<Map<String, Value>> {
    let mut path = format!("/_matrix/federation/v1/query/profile?user_id={}", client::encode(user_id.as_str()));
    if let Some(field) = field {
        path.push_str(&format!("&field={}", client::encode(field)));
    }
    let server = user_id.server_name();
    let answer: Map<String, Value> =
        client::request_with_timeout(svc, server, Method::GET, &path, None, REMOTE_TIMEOUT).await?;
    Ok(answer
        .into_iter()
        .filter(|(name, value)| FIELDS.contains(&name.as_str()) && value.is_string())
        .filter(|(name, _)| field.is_none_or(|f| f == name))
        .collect())
}
