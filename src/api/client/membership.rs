//! Membership: join, leave, forget, invite, kick, ban, unban, knock.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ruma::events::StateEventType;
use ruma::{OwnedRoomId, OwnedUserId, RoomAliasId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::parse_room_id;
use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::rooms::{self, create::member_draft};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/join/{room_id_or_alias}"), post(join_by_id_or_alias))
        .route(v3!("/rooms/{room_id}/join"), post(join_room))
        .route(v3!("/knock/{room_id_or_alias}"), post(knock))
        .route(v3!("/rooms/{room_id}/leave"), post(leave))
        .route(v3!("/rooms/{room_id}/forget"), post(forget))
        .route(v3!("/rooms/{room_id}/invite"), post(invite))
        .route(v3!("/rooms/{room_id}/kick"), post(kick))
        .route(v3!("/rooms/{room_id}/ban"), post(ban))
        .route(v3!("/rooms/{room_id}/unban"), post(unban))
}

#[derive(Deserialize, Default)]
struct ReasonBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
struct TargetBody {
    user_id: OwnedUserId,
    #[serde(default)]
    reason: Option<String>,
}

/// A room ID, or a local alias resolved to one.
async fn resolve_room(state: &AppState, id_or_alias: &str) -> Result<OwnedRoomId> {
    if id_or_alias.starts_with('#') {
        let alias = RoomAliasId::parse(id_or_alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        let (room_id, _) = storage::rooms::resolve_alias(&state.db, alias.as_str())
            .await?
            .ok_or_else(|| Error::not_found("Room alias not found"))?;
        return parse_room_id(&room_id);
    }
    parse_room_id(id_or_alias)
}

/// Joins a local room, filling in `join_authorised_via_users_server` for restricted rooms.
pub async fn join(state: &AppState, room_id: &RoomId, user: &UserId, reason: Option<&str>) -> Result<()> {
    if storage::rooms::blocked_by(&state.db, room_id.as_str()).await?.is_some() {
        return Err(Error::forbidden("This room has been blocked on this server"));
    }
    let version = rooms::room_version(state, room_id).await.map_err(|_| {
        Error::not_found("No known servers: this server is not in the room and cannot join over federation yet")
    })?;
    let mut draft = member_draft(state, user, "join", reason).await?;
    let current = rooms::current_state(state, room_id).await?;
    let membership = rooms::membership_in(state, &current, user).await?;
    if membership != "join"
        && membership != "invite"
        && let Some(authoriser) = restricted_join_authoriser(state, &current, &version, user).await?
    {
        draft.content["join_authorised_via_users_server"] = json!(authoriser);
    }
    rooms::send(state, room_id, user, draft, None).await?;
    let mut tx = state.db.begin().await?;
    storage::rooms::unforget(&mut tx, user.as_str(), room_id.as_str()).await?;
    tx.commit().await?;
    Ok(())
}

/// For a restricted room the user may join through membership of an allowed room: a local
/// member who may invite, to authorise the join.
async fn restricted_join_authoriser(
    state: &AppState,
    current: &rooms::state::StateMap,
    version: &ruma::RoomVersionId,
    user: &UserId,
) -> Result<Option<OwnedUserId>> {
    if !rooms::versions::rules(version)?.authorization.restricted_join_rule {
        return Ok(None);
    }
    let Some(rules) = rooms::state_pdu(state, current, &StateEventType::RoomJoinRules, "").await? else {
        return Ok(None);
    };
    let content = rules.content_value();
    let rule = content.get("join_rule").and_then(Value::as_str).unwrap_or_default();
    if rule != "restricted" && rule != "knock_restricted" {
        return Ok(None);
    }
    let allowed_rooms = content.get("allow").and_then(Value::as_array).cloned().unwrap_or_default();
    let mut qualifies = false;
    for allow in &allowed_rooms {
        if allow.get("type").and_then(Value::as_str) == Some("m.room_membership")
            && let Some(allowed) = allow.get("room_id").and_then(Value::as_str)
            && storage::rooms::membership(&state.db, allowed, user.as_str()).await?.as_deref() == Some("join")
        {
            qualifies = true;
            break;
        }
    }
    if !qualifies {
        return Ok(None);
    }
    for ((kind, key), id) in current.iter() {
        if *kind != StateEventType::RoomMember {
            continue;
        }
        let Ok(member) = UserId::parse(key) else { continue };
        if member.server_name() != state.config.server_name.as_str() {
            continue;
        }
        let joined =
            rooms::get_pdu(state, id).await?.and_then(|p| p.content_str("membership")).as_deref() == Some("join");
        if joined && rooms::power::has_level(state, current, &member, rooms::power::Action::Invite).await? {
            return Ok(Some(member));
        }
    }
    Ok(None)
}

async fn join_by_id_or_alias(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id_or_alias): Path<String>,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    let room_id = resolve_room(&state, &id_or_alias).await?;
    join(&state, &room_id, &me.user_id, body.reason.as_deref()).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

async fn join_room(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    let room_id = parse_room_id(&room_id)?;
    join(&state, &room_id, &me.user_id, body.reason.as_deref()).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

async fn knock(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id_or_alias): Path<String>,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    let room_id = resolve_room(&state, &id_or_alias).await?;
    rooms::room_version(&state, &room_id).await?;
    let draft = member_draft(&state, &me.user_id, "knock", body.reason.as_deref()).await?;
    rooms::send(&state, &room_id, &me.user_id, draft, None).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

async fn leave(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    rooms::room_version(&state, &room_id).await?;
    let draft = member_draft(&state, &me.user_id, "leave", body.reason.as_deref()).await?;
    rooms::send(&state, &room_id, &me.user_id, draft, None).await?;
    Ok(Json(json!({})))
}

async fn forget(State(state): State<AppState>, Auth(me): Auth, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    rooms::room_version(&state, &room_id).await?;
    let membership = storage::rooms::membership(&state.db, room_id.as_str(), me.user_id.as_str()).await?;
    if matches!(membership.as_deref(), Some("join" | "invite" | "knock")) {
        return Err(Error::matrix(http::StatusCode::BAD_REQUEST, "M_UNKNOWN", "Leave the room before forgetting it"));
    }
    let mut tx = state.db.begin().await?;
    storage::rooms::forget(&mut tx, me.user_id.as_str(), room_id.as_str()).await?;
    tx.commit().await?;
    Ok(Json(json!({})))
}

/// Sends a membership change by `me` about another user.
async fn set_membership(
    state: &AppState,
    me: &UserId,
    room_id: &str,
    target: &UserId,
    membership: &str,
    reason: Option<&str>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(room_id)?;
    rooms::room_version(state, &room_id).await?;
    let draft = member_draft(state, target, membership, reason).await?;
    rooms::send(state, &room_id, me, draft, None).await?;
    Ok(Json(json!({})))
}

async fn invite(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<TargetBody>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    if body.user_id.server_name() == state.config.server_name.as_str()
        && !storage::users::exists(&state.db, body.user_id.as_str()).await?
    {
        return Err(Error::not_found("Unknown user"));
    }
    // Shadow-banned users' invites seem to work but reach no one.
    if me.shadow_banned {
        return Ok(Json(json!({})));
    }
    set_membership(&state, &me.user_id, &room_id, &body.user_id, "invite", body.reason.as_deref()).await
}

async fn kick(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<TargetBody>,
) -> Result<Json<Value>> {
    set_membership(&state, &me.user_id, &room_id, &body.user_id, "leave", body.reason.as_deref()).await
}

async fn ban(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<TargetBody>,
) -> Result<Json<Value>> {
    set_membership(&state, &me.user_id, &room_id, &body.user_id, "ban", body.reason.as_deref()).await
}

async fn unban(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<TargetBody>,
) -> Result<Json<Value>> {
    let room_id_parsed = parse_room_id(&room_id)?;
    let current = rooms::current_state(&state, &room_id_parsed).await?;
    if rooms::membership_in(&state, &current, &body.user_id).await? != "ban" {
        return Err(Error::forbidden("The user is not banned"));
    }
    set_membership(&state, &me.user_id, &room_id, &body.user_id, "leave", body.reason.as_deref()).await
}
