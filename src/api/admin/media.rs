//! Media: quarantine (one media, a room's, a user's), delete, list a user's media.

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::users::{paging, parse_user_id};
use super::{admin_v1, next_token};
use crate::AppState;
use crate::admin::users::local_user;
use crate::api::client::rooms::parse_room_id;
use crate::error::{Error, Result};
use crate::http::extract::{Admin, Path, Query};
use crate::storage::{self, media::MediaRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/media/quarantine/{server_name}/{media_id}"), post(quarantine))
        .route(admin_v1!("/media/unquarantine/{server_name}/{media_id}"), post(unquarantine))
        .route(admin_v1!("/room/{room_id}/media/quarantine"), post(quarantine_room))
        .route(admin_v1!("/user/{user_id}/media/quarantine"), post(quarantine_user))
        .route(admin_v1!("/media/{server_name}/{media_id}"), delete(delete_media))
        .route(admin_v1!("/users/{user_id}/media"), get(list_user_media).delete(delete_user_media))
}

/// Only this server's media are stored here.
fn ensure_local(state: &AppState, server_name: &str) -> Result<()> {
    if server_name != state.config.server_name {
        return Err(Error::invalid_param("Only local media can be managed on this server"));
    }
    Ok(())
}

async fn set_quarantine(state: &AppState, server_name: &str, media_id: &str, on: bool) -> Result<Json<Value>> {
    ensure_local(state, server_name)?;
    let mut tx = state.db.begin().await?;
    let found = storage::media::set_quarantined(&mut tx, media_id, on).await?;
    tx.commit().await?;
    if !found {
        return Err(Error::not_found("Media not found"));
    }
    Ok(Json(json!({})))
}

async fn quarantine(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    set_quarantine(&state, &server_name, &media_id, true).await
}

async fn unquarantine(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    set_quarantine(&state, &server_name, &media_id, false).await
}

async fn quarantine_room(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(room_id): Path<String>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let n = crate::media::quarantine_in_room(&state, room_id.as_str()).await?;
    Ok(Json(json!({ "num_quarantined": n })))
}

async fn quarantine_user(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    let mut tx = state.db.begin().await?;
    let n = storage::media::quarantine_uploads_of(&mut tx, user_id.as_str()).await?;
    tx.commit().await?;
    Ok(Json(json!({ "num_quarantined": n })))
}

async fn delete_media(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((server_name, media_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    ensure_local(&state, &server_name)?;
    if !crate::media::delete_local(&state, &media_id).await? {
        return Err(Error::not_found("Media not found"));
    }
    Ok(Json(json!({ "deleted_media": [media_id], "total": 1 })))
}

fn media_json(m: &MediaRow) -> Value {
    json!({
        "media_id": m.media_id,
        "media_type": m.content_type,
        "media_length": m.content.as_ref().map(|c| c.size),
        "upload_name": m.file_name,
        "created_ts": m.created_ts,
        "last_access_ts": m.created_ts,
        "quarantined_by": m.quarantined.then_some("admin"),
        "safe_from_quarantine": false,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
}

async fn list_user_media(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let (from, limit) = paging(q.from, q.limit)?;
    let (rows, total) = storage::media::list_by_uploader(&state.db, user_id.as_str(), from, limit).await?;
    let mut body = json!({ "media": rows.iter().map(media_json).collect::<Vec<_>>(), "total": total });
    if let Some(next) = next_token(from, rows.len(), total) {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}

async fn delete_user_media(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let (from, limit) = paging(q.from, q.limit)?;
    let (rows, _) = storage::media::list_by_uploader(&state.db, user_id.as_str(), from, limit).await?;
    let mut deleted = Vec::with_capacity(rows.len());
    for m in rows {
        if crate::media::delete_local(&state, &m.media_id).await? {
            deleted.push(m.media_id);
        }
    }
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}
