//! Rooms: list, details, members, state, block, delete (shutdown, v1 and v2), make admin.

use std::cmp::Ordering;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::users::{paging, parse_user_id};
use super::{admin_v1, admin_v2, descending};
use crate::AppState;
use crate::admin::rooms::{self, DeletionStatus, RoomSummary, Shutdown, ShutdownReport};
use crate::api::client::rooms::parse_room_id;
use crate::error::{Error, Result};
use crate::http::extract::{self, Admin, Path, Query};
use crate::rooms::format::client_event;
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/rooms"), get(list))
        .route(admin_v1!("/rooms/{room_id}"), get(details).delete(delete_v1))
        .route(admin_v1!("/rooms/{room_id}/members"), get(members))
        .route(admin_v1!("/rooms/{room_id}/state"), get(room_state))
        .route(admin_v1!("/rooms/{room_id}/block"), get(get_block).put(set_block))
        .route(admin_v1!("/rooms/{room_id}/make_room_admin"), post(make_room_admin))
        .route(admin_v2!("/rooms/{room_id}"), axum::routing::delete(delete_v2))
        .route(admin_v2!("/rooms/{room_id}/delete_status"), get(delete_status_of_room))
        .route(admin_v2!("/rooms/delete_status/{delete_id}"), get(delete_status))
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    dir: Option<String>,
    #[serde(default)]
    search_term: Option<String>,
}

/// The comparison behind `order_by` (Synapse's names).
fn order(order_by: &str) -> Result<fn(&RoomSummary, &RoomSummary) -> Ordering> {
    Ok(match order_by {
        "name" | "alphabetical" => |a, b| a.name.cmp(&b.name),
        "size" | "joined_members" => |a, b| b.joined_members.cmp(&a.joined_members),
        "joined_local_members" => |a, b| b.joined_local_members.cmp(&a.joined_local_members),
        "canonical_alias" => |a, b| a.canonical_alias.cmp(&b.canonical_alias),
        "version" => |a, b| a.version.cmp(&b.version),
        "creator" => |a, b| a.creator.cmp(&b.creator),
        "encryption" => |a, b| a.encryption.cmp(&b.encryption),
        "federatable" => |a, b| a.federatable.cmp(&b.federatable),
        "public" => |a, b| a.public.cmp(&b.public),
        "join_rules" => |a, b| a.join_rules.cmp(&b.join_rules),
        "guest_access" => |a, b| a.guest_access.cmp(&b.guest_access),
        "history_visibility" => |a, b| a.history_visibility.cmp(&b.history_visibility),
        "state_events" => |a, b| b.state_events.cmp(&a.state_events),
        other => return Err(Error::invalid_param(format!("Unknown order_by {other}"))),
    })
}

async fn list(State(state): State<AppState>, Admin(_): Admin, Query(q): Query<ListQuery>) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let compare = order(q.order_by.as_deref().unwrap_or("name"))?;
    let backwards = descending(q.dir.as_deref())?;
    let mut all = rooms::all_summaries(&state, q.search_term.as_deref().filter(|t| !t.is_empty())).await?;
    all.sort_by(|a, b| {
        let o = compare(a, b).then_with(|| a.room_id.cmp(&b.room_id));
        if backwards { o.reverse() } else { o }
    });
    let total = all.len() as i64;
    let page: Vec<Value> = all.iter().skip(from as usize).take(limit as usize).map(RoomSummary::to_json).collect();
    let mut body = json!({ "rooms": page, "offset": from, "total_rooms": total });
    let next = from + page.len() as i64;
    if next < total {
        body["next_batch"] = json!(next);
    }
    if from > 0 {
        body["prev_batch"] = json!((from - limit).max(0));
    }
    Ok(Json(body))
}

async fn details(State(state): State<AppState>, Admin(_): Admin, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let summary = rooms::summary(&state, &parse_room_id(&room_id)?).await?;
    Ok(Json(summary.to_json()))
}

async fn members(State(state): State<AppState>, Admin(_): Admin, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    crate::rooms::room_version(&state, &room_id).await?;
    let joined = storage::rooms::joined_users(&state.db, room_id.as_str()).await?;
    Ok(Json(json!({ "total": joined.len(), "members": joined })))
}

async fn room_state(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let current = crate::rooms::current_state(&state, &room_id).await?;
    let mut events = Vec::with_capacity(current.len());
    for id in current.values() {
        if let Some(pdu) = crate::rooms::get_pdu(&state, id).await? {
            events.push(client_event(&state, &pdu, None, false).await?);
        }
    }
    Ok(Json(json!({ "state": events })))
}

async fn get_block(State(state): State<AppState>, Admin(_): Admin, Path(room_id): Path<String>) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    Ok(Json(match storage::rooms::blocked_by(&state.db, room_id.as_str()).await? {
        Some(by) => json!({ "block": true, "user_id": by }),
        None => json!({ "block": false }),
    }))
}

#[derive(Deserialize)]
struct BlockBody {
    block: bool,
}

async fn set_block(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<BlockBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let mut tx = state.db.begin().await?;
    if body.block {
        storage::rooms::block(&mut tx, room_id.as_str(), me.user_id.as_str()).await?;
    } else {
        storage::rooms::unblock(&mut tx, room_id.as_str()).await?;
    }
    tx.commit().await?;
    Ok(Json(json!({ "block": body.block })))
}

#[derive(Deserialize)]
struct DeleteBody {
    #[serde(default)]
    new_room_user_id: Option<OwnedUserId>,
    #[serde(default)]
    room_name: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    block: bool,
    #[serde(default = "yes")]
    purge: bool,
}

fn yes() -> bool {
    true
}

fn shutdown_of(me: &OwnedUserId, body: DeleteBody) -> Shutdown {
    let notice = body.new_room_user_id.map(|sender| rooms::Notice {
        sender,
        room_name: body.room_name.unwrap_or_else(|| "Content Violation Notification".into()),
        message: body.message.unwrap_or_else(|| {
            "Sharing illegal content on this server is not permitted and rooms in violation will be blocked.".into()
        }),
    });
    Shutdown { requester: me.clone(), block: body.block, purge: body.purge, notice }
}

fn report_json(report: &ShutdownReport) -> Value {
    json!({
        "kicked_users": report.kicked_users,
        "failed_to_kick_users": report.failed_to_kick_users,
        "local_aliases": report.local_aliases,
        "new_room_id": report.new_room_id,
    })
}

async fn delete_v1(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<DeleteBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let report = rooms::shutdown(&state, &room_id, &shutdown_of(&me.user_id, body)).await?;
    Ok(Json(report_json(&report)))
}

/// Version 2 answers with a delete ID to poll; Plexus has finished by the time it answers.
async fn delete_v2(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<DeleteBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let delete_id = rooms::delete(&state, &room_id, shutdown_of(&me.user_id, body)).await?;
    Ok(Json(json!({ "delete_id": delete_id })))
}

/// A deletion as Synapse shows it: `shutdown_room` once complete, `error` once failed.
fn status_json(deletion: &DeletionStatus) -> Value {
    let mut body = json!({ "delete_id": deletion.delete_id, "status": deletion.status });
    if let Some(report) = &deletion.report {
        body["shutdown_room"] = report_json(report);
    }
    if let Some(error) = &deletion.error {
        body["error"] = json!(error);
    }
    body
}

async fn delete_status_of_room(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let results: Vec<Value> = rooms::deletions_of_room(&state, &room_id).await?.iter().map(status_json).collect();
    if results.is_empty() {
        return Err(Error::not_found("No delete task for room"));
    }
    Ok(Json(json!({ "results": results })))
}

async fn delete_status(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(delete_id): Path<String>,
) -> Result<Json<Value>> {
    let deletion = rooms::deletion(&state, &delete_id).await?.ok_or_else(|| Error::not_found("delete id not found"))?;
    let mut body = status_json(&deletion);
    body["room_id"] = json!(deletion.room_id);
    Ok(Json(body))
}

#[derive(Deserialize)]
struct MakeAdminBody {
    #[serde(default)]
    user_id: Option<String>,
}

async fn make_room_admin(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<MakeAdminBody>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let user = match body.user_id {
        Some(u) => parse_user_id(&u)?,
        None => me.user_id,
    };
    rooms::make_room_admin(&state, &room_id, &user).await?;
    Ok(Json(json!({})))
}
