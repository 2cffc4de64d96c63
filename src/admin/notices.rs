//! Server notices: messages from the server to a user, in a room of their own where only
//! the server speaks (Synapse's `server_notices`). The room is made (and the user invited)
//! on the first notice, and again when the user has left it.

use axum::http::StatusCode;
use ruma::events::TimelineEventType;
use ruma::{OwnedEventId, OwnedUserId, RoomId, UserId};
use serde_json::{Map, Value, json};

use crate::Services;
use crate::accounts;
use crate::error::{Error, Result};
use crate::rooms::{self, Draft, create};
use crate::storage;

/// The account that sends notices, created when first needed.
async fn system_user(svc: &Services) -> Result<OwnedUserId> {
    let Some(localpart) = svc.config.admin.server_notices_localpart.as_deref() else {
        return Err(Error::matrix(
            StatusCode::BAD_REQUEST,
            "M_UNKNOWN",
            "Server notices are not enabled on this server",
        ));
    };
    let user_id = UserId::parse(format!("@{localpart}:{}", svc.config.server_name))
        .map_err(|e| Error::Internal(anyhow::anyhow!("invalid server_notices_localpart: {e}")))?;
    if !storage::users::exists(&svc.db, user_id.as_str()).await? {
        match accounts::create_account(&svc.db, &user_id, None, false, false, None).await {
            // Another notice created it meanwhile.
            Err(Error::Matrix { errcode: "M_USER_IN_USE", .. }) | Ok(()) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(user_id)
}

/// Sends a notice (an event of type `kind`, a state event when `state_key` is given) to a
/// local user.
pub async fn send(
    svc: &Services,
    user: &UserId,
    kind: &str,
    state_key: Option<String>,
    content: Value,
) -> Result<OwnedEventId> {
    let system = system_user(svc).await?;
    crate::admin::users::local_user(svc, user).await?;
    let room_id = notice_room(svc, &system, user).await?;
    let kind = TimelineEventType::from(kind);
    let draft = match state_key {
        Some(key) => Draft::state(kind, key, content),
        None => Draft::message(kind, content),
    };
    rooms::send(svc, &room_id, &system, draft, None).await
}

/// The user's notices room, made anew when they are neither joined nor invited there.
async fn notice_room(svc: &Services, system: &UserId, user: &UserId) -> Result<ruma::OwnedRoomId> {
    if let Some(room_id) = storage::rooms::server_notice_room(&svc.db, user.as_str()).await?
        && let Ok(room_id) = RoomId::parse(&room_id)
        && matches!(
            storage::rooms::membership(&svc.db, room_id.as_str(), user.as_str()).await?.as_deref(),
            Some("join" | "invite")
        )
    {
        return Ok(room_id);
    }
    // Only the server may speak: everyone else is at 0, sending needs 50.
    let mut power = Map::new();
    power.insert("events_default".into(), json!(50));
    let mut creation_content = Map::new();
    creation_content.insert("m.federate".into(), json!(false));
    let request = create::CreateRoomRequest {
        name: Some("Server Notices".into()),
        preset: Some("private_chat".into()),
        invite: vec![user.to_owned()],
        creation_content: Some(creation_content),
        power_level_content_override: Some(power),
        ..Default::default()
    };
    let room_id = create::create_room(svc, system, request).await?;
    let tag = json!({ "tags": { "m.server_notice": {} } });
    let mut tx = svc.db.begin().await?;
    storage::rooms::set_server_notice_room(&mut tx, user.as_str(), room_id.as_str()).await?;
    storage::account_data::put(&mut tx, user.as_str(), room_id.as_str(), "m.tag", &tag.to_string()).await?;
    tx.commit().await?;
    Ok(room_id)
}
