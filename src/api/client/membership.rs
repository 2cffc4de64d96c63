//! Membership: join, leave, forget, invite, kick, ban, unban, knock.

use axum::extract::{RawQuery, State};
use axum::routing::post;
use axum::{Json, Router};
use ruma::{OwnedRoomId, OwnedServerName, OwnedUserId, RoomAliasId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::parse_room_id;
use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::rooms::{self, create::member_draft, membership};
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

/// A room ID, or an alias resolved to one (over federation for other servers' aliases)
/// with the servers that know the room.
async fn resolve_room(state: &AppState, id_or_alias: &str) -> Result<(OwnedRoomId, Vec<OwnedServerName>)> {
    if id_or_alias.starts_with('#') {
        let alias = RoomAliasId::parse(id_or_alias).map_err(|_| Error::invalid_param("Invalid room alias"))?;
        return rooms::federation::resolve_alias(state, &alias).await;
    }
    Ok((parse_room_id(id_or_alias)?, Vec::new()))
}

/// The servers named by `via` (and its deprecated alias `server_name`), which may repeat.
fn via_servers(query: Option<&str>) -> Result<Vec<OwnedServerName>> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == "via" || key == "server_name")
        .map(|(_, value)| {
            OwnedServerName::try_from(value.as_ref())
                .map_err(|_| Error::invalid_param(format!("Invalid server {value}")))
        })
        .collect()
}

async fn join_by_id_or_alias(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id_or_alias): Path<String>,
    RawQuery(query): RawQuery,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    let mut via = via_servers(query.as_deref())?;
    let (room_id, servers) = resolve_room(&state, &id_or_alias).await?;
    via.extend(servers);
    membership::join(&state, &room_id, &me.user_id, body.reason.as_deref(), &via).await?;
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
    membership::join(&state, &room_id, &me.user_id, body.reason.as_deref(), &[]).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

async fn knock(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id_or_alias): Path<String>,
    RawQuery(query): RawQuery,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    me.ensure_not_suspended()?;
    let mut via = via_servers(query.as_deref())?;
    let (room_id, servers) = resolve_room(&state, &id_or_alias).await?;
    via.extend(servers);
    membership::knock(&state, &room_id, &me.user_id, body.reason.as_deref(), &via).await?;
    Ok(Json(json!({ "room_id": room_id })))
}

async fn leave(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<ReasonBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    membership::leave(&state, &room_id, &me.user_id, body.reason.as_deref()).await?;
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
    let room_id = parse_room_id(&room_id)?;
    rooms::room_version(&state, &room_id).await?;
    membership::invite(&state, &room_id, &me.user_id, &body.user_id, body.reason.as_deref()).await?;
    Ok(Json(json!({})))
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
