//! Profiles (display name and avatar URL): local users' from the database, other users' from
//! their servers (`GET /_matrix/federation/v1/query/profile`), not cached.

use std::time::Duration;

use axum::http::Method;
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::federation::client;
use crate::storage;
use crate::{Services, rooms};

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
    let mut row = storage::users::get(&svc.db, user_id.as_str()).await?;
    // An appservice may create the users of its namespace when they are first looked up.
    if row.is_none() && crate::appservice::query_user(svc, user_id).await? {
        row = storage::users::get(&svc.db, user_id.as_str()).await?;
    }
    let user = match row {
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

/// Sets (or with `None` clears) a field of a local user's profile, then updates their
/// member event in every room they are joined to, as clients show names from those.
pub async fn set(svc: &Services, user_id: &UserId, field: &str, value: Option<&str>) -> Result<()> {
    let mut tx = svc.db.begin().await?;
    match field {
        "displayname" => storage::users::set_displayname(&mut tx, user_id.as_str(), value).await?,
        _ => storage::users::set_avatar_url(&mut tx, user_id.as_str(), value).await?,
    }
    tx.commit().await?;
    for room in storage::rooms::rooms_of_user(&svc.db, user_id.as_str(), "join").await? {
        // A room that refuses the update (or fails) keeps the old name; the profile is set.
        if let Err(e) = update_member_event(svc, user_id, &room, field, value).await {
            tracing::warn!(%user_id, room, error = %e, "member event not updated with the profile");
        }
    }
    Ok(())
}

/// Sends a copy of the user's join event in a room with one profile field changed.
async fn update_member_event(
    svc: &Services,
    user_id: &UserId,
    room: &str,
    field: &str,
    value: Option<&str>,
) -> Result<()> {
    let room_id = RoomId::parse(room).map_err(|e| Error::Internal(e.into()))?;
    let state = rooms::current_state(svc, &room_id).await?;
    let Some(member) = rooms::state_pdu(svc, &state, &StateEventType::RoomMember, user_id.as_str()).await? else {
        return Ok(());
    };
    let mut content = member.content_value();
    if content.get("membership").and_then(Value::as_str) != Some("join")
        || content.get(field).and_then(Value::as_str) == value
    {
        return Ok(());
    }
    match value {
        Some(value) => content[field] = json!(value),
        None => {
            content.as_object_mut().map(|c| c.remove(field));
        }
    }
    let draft = rooms::Draft::state(TimelineEventType::RoomMember, user_id.as_str(), content);
    rooms::send(svc, &room_id, user_id, draft, None).await?;
    Ok(())
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
