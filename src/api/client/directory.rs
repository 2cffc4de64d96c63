//! Room directory: local aliases (create, resolve, delete, list per room), the checks on
//! `m.room.canonical_alias`, and the published room directory (visibility, `/publicRooms`,
//! served by `crate::directory`).

use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::routing::get;
use axum::{Json, Router};
use ruma::events::{StateEventType, TimelineEventType};
use ruma::{OwnedRoomAliasId, OwnedRoomId, RoomAliasId, RoomId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::{parse_room_id, require_joined};
use super::v3;
use crate::accounts::Identity;
use crate::directory::{self, PublicRoomsRequest, state_content};
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, MaybeAuth, Path, Query};
use crate::rooms::{self, Draft};
use crate::{AppState, Services, storage};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/directory/room/{room_alias}"), get(resolve_alias).put(create_alias).delete(delete_alias))
        .route(v3!("/rooms/{room_id}/aliases"), get(room_aliases))
        .route(v3!("/directory/list/room/{room_id}"), get(get_visibility).put(set_visibility))
        .route(v3!("/publicRooms"), get(public_rooms_get).post(public_rooms_post))
}

fn parse_alias(alias: &str) -> Result<OwnedRoomAliasId> {
    RoomAliasId::parse(alias).map_err(|_| Error::invalid_param(format!("Invalid room alias {alias}")))
}

fn is_local(svc: &Services, alias: &RoomAliasId) -> bool {
    alias.server_name().as_str() == svc.config.server_name
}

fn require_local(svc: &Services, alias: &RoomAliasId) -> Result<()> {
    if !is_local(svc, alias) {
        return Err(Error::invalid_param("Room alias must be local to this server"));
    }
    Ok(())
}

/// Whether a user may manage a room's entries in the directory: a server admin, or a
/// joined member with the power to send `m.room.canonical_alias` (as Synapse).
async fn can_manage_directory(svc: &Services, me: &Identity, room_id: &RoomId) -> Result<bool> {
    if me.is_admin {
        return Ok(true);
    }
    let current = rooms::current_state(svc, room_id).await?;
    if rooms::membership_in(svc, &current, &me.user_id).await? != "join" {
        return Ok(false);
    }
    rooms::power::can_send_state(svc, &current, &me.user_id, "m.room.canonical_alias").await
}

#[derive(Deserialize)]
struct NewAlias {
    room_id: OwnedRoomId,
}

async fn create_alias(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(alias): Path<String>,
    extract::Json(body): extract::Json<NewAlias>,
) -> Result<Json<Value>> {
    let alias = parse_alias(&alias)?;
    require_local(&state, &alias)?;
    state.appservices.check_alias_free(&alias, me.appservice.as_deref())?;
    require_joined(&state, &body.room_id, &me.user_id).await?;
    let mut tx = state.db.begin().await?;
    let created =
        storage::rooms::create_alias(&mut tx, alias.as_str(), body.room_id.as_str(), me.user_id.as_str()).await?;
    tx.commit().await?;
    if !created {
        return Err(Error::matrix(StatusCode::CONFLICT, "M_UNKNOWN", format!("Room alias {alias} already exists")));
    }
    Ok(Json(json!({})))
}

async fn resolve_alias(State(state): State<AppState>, Path(alias): Path<String>) -> Result<Json<Value>> {
    let alias = parse_alias(&alias)?;
    let (room_id, servers) = rooms::federation::resolve_alias(&state, &alias).await?;
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}

async fn delete_alias(State(state): State<AppState>, Auth(me): Auth, Path(alias): Path<String>) -> Result<Json<Value>> {
    let alias = parse_alias(&alias)?;
    require_local(&state, &alias)?;
    let (room_id, creator) = storage::rooms::resolve_alias(&state.db, alias.as_str())
        .await?
        .ok_or_else(|| Error::not_found(format!("Room alias {alias} not found")))?;
    let room_id = parse_room_id(&room_id)?;
    let allowed = creator == me.user_id.as_str() || can_manage_directory(&state, &me, &room_id).await?;
    if !allowed {
        return Err(Error::forbidden("You may not delete this alias"));
    }
    let mut tx = state.db.begin().await?;
    storage::rooms::delete_alias(&mut tx, alias.as_str()).await?;
    tx.commit().await?;
    drop_from_canonical_alias(&state, &me, &room_id, alias.as_str()).await?;
    Ok(Json(json!({})))
}

/// Removes a deleted alias from the room's `m.room.canonical_alias`, when the user may send
/// it; the deletion stands either way (as the spec recommends).
async fn drop_from_canonical_alias(svc: &Services, me: &Identity, room_id: &RoomId, alias: &str) -> Result<()> {
    let current = rooms::current_state(svc, room_id).await?;
    let Some(Value::Object(mut content)) = state_content(svc, &current, StateEventType::RoomCanonicalAlias).await?
    else {
        return Ok(());
    };
    let mut changed = false;
    if content.get("alias").and_then(Value::as_str) == Some(alias) {
        content.remove("alias");
        changed = true;
    }
    if let Some(alt) = content.get_mut("alt_aliases").and_then(Value::as_array_mut) {
        let before = alt.len();
        alt.retain(|a| a.as_str() != Some(alias));
        changed |= alt.len() != before;
    }
    if !changed {
        return Ok(());
    }
    let draft = Draft::state(TimelineEventType::RoomCanonicalAlias, "", Value::Object(content));
    match rooms::send(svc, room_id, &me.user_id, draft, None).await {
        Err(e) if e.errcode() == "M_FORBIDDEN" => {
            tracing::info!(%room_id, %alias, "alias deleted; its user may not update the canonical alias");
            Ok(())
        }
        other => other.map(|_| ()),
    }
}

/// The aliases a `m.room.canonical_alias` content lists (`alias` and `alt_aliases`).
fn listed_aliases(content: &Value) -> Vec<&str> {
    let alt = content.get("alt_aliases").and_then(Value::as_array).into_iter().flatten();
    content.get("alias").into_iter().chain(alt).filter_map(Value::as_str).collect()
}

/// The checks on a `m.room.canonical_alias` content a client sends (called by the state PUT
/// handler): every alias not already in the room's current event must be valid (400
/// `M_INVALID_PARAM`) and point at this room (400 `M_BAD_ALIAS`). Aliases of other servers
/// cannot be checked without federation and are refused.
pub async fn check_canonical_alias(svc: &Services, room_id: &RoomId, content: &Value) -> Result<()> {
    let wanted = listed_aliases(content);
    if wanted.is_empty() {
        return Ok(());
    }
    let current = rooms::current_state(svc, room_id).await?;
    let existing = state_content(svc, &current, StateEventType::RoomCanonicalAlias).await?.unwrap_or_default();
    let existing = listed_aliases(&existing);
    for alias in wanted.into_iter().filter(|a| !existing.contains(a)) {
        let parsed = parse_alias(alias)?;
        let points_here = is_local(svc, &parsed)
            && storage::rooms::resolve_alias(&svc.db, alias).await?.is_some_and(|(room, _)| room == room_id.as_str());
        if !points_here {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_BAD_ALIAS",
                format!("The alias {alias} does not point to this room"),
            ));
        }
    }
    Ok(())
}

/// Whether a user may look into a room: joined to it, or the room is world-readable (404
/// for an unknown room).
pub(super) async fn can_peek(svc: &Services, room_id: &RoomId, user: &UserId) -> Result<bool> {
    let current = rooms::current_state(svc, room_id).await?;
    if rooms::membership_in(svc, &current, user).await? == "join" {
        return Ok(true);
    }
    let visibility = state_content(svc, &current, StateEventType::RoomHistoryVisibility).await?;
    Ok(visibility.is_some_and(|c| c["history_visibility"] == "world_readable"))
}

async fn room_aliases(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    if !(can_peek(&state, &room_id, &me.user_id).await? || me.is_admin) {
        return Err(Error::forbidden("You are not a member of this room"));
    }
    let aliases = storage::rooms::aliases_of_room(&state.db, room_id.as_str()).await?;
    Ok(Json(json!({ "aliases": aliases })))
}

async fn get_visibility(State(state): State<AppState>, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    rooms::room_version(&state, &room_id).await?;
    let published = storage::rooms::is_published(&state.db, room_id.as_str()).await?;
    Ok(Json(json!({ "visibility": if published { "public" } else { "private" } })))
}

#[derive(Deserialize)]
struct VisibilityBody {
    #[serde(default)]
    visibility: Option<String>,
}

async fn set_visibility(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<VisibilityBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let published = match body.visibility.as_deref() {
        None | Some("public") => true,
        Some("private") => false,
        Some(other) => return Err(Error::invalid_param(format!("Invalid visibility {other:?}"))),
    };
    rooms::room_version(&state, &room_id).await?;
    if !can_manage_directory(&state, &me, &room_id).await? {
        return Err(Error::forbidden("You may not change this room's visibility in the directory"));
    }
    let mut tx = state.db.begin().await?;
    storage::rooms::set_published(&mut tx, room_id.as_str(), published).await?;
    tx.commit().await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct PublicRoomsQuery {
    #[serde(default)]
    limit: Option<u64>,
    #[serde(default)]
    since: Option<String>,
    #[serde(default)]
    server: Option<String>,
}

#[derive(Deserialize)]
struct ServerQuery {
    #[serde(default)]
    server: Option<String>,
}

async fn public_rooms_get(
    State(state): State<AppState>,
    MaybeAuth(_): MaybeAuth,
    Query(q): Query<PublicRoomsQuery>,
) -> Result<Json<Value>> {
    let request = PublicRoomsRequest { limit: q.limit, since: q.since, ..Default::default() };
    directory::public_rooms(&state, q.server.as_deref(), Method::GET, request).await.map(Json)
}

async fn public_rooms_post(
    State(state): State<AppState>,
    Auth(_): Auth,
    Query(q): Query<ServerQuery>,
    extract::Json(body): extract::Json<PublicRoomsRequest>,
) -> Result<Json<Value>> {
    directory::public_rooms(&state, q.server.as_deref(), Method::POST, body).await.map(Json)
}
