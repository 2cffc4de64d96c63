//! Media: quarantine (one media, a room's, a user's), delete (one, by age, a user's), list a
//! user's media, purge the remote media cache, per-user usage statistics.

use axum::extract::State;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::users::{paging, parse_user_id};
use super::{admin_v1, descending, next_token};
use crate::AppState;
use crate::admin::users::local_user;
use crate::api::client::rooms::parse_room_id;
use crate::error::{Error, Result};
use crate::http::extract::{Admin, Path, Query};
use crate::media::admin as media_admin;
use crate::storage::{
    self,
    media::{MediaOrder, MediaRow, UsageOrder, UsageQuery},
};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v1!("/media/quarantine/{server_name}/{media_id}"), post(quarantine))
        .route(admin_v1!("/media/unquarantine/{server_name}/{media_id}"), post(unquarantine))
        .route(admin_v1!("/room/{room_id}/media/quarantine"), post(quarantine_room))
        .route(admin_v1!("/user/{user_id}/media/quarantine"), post(quarantine_user))
        .route(admin_v1!("/media/{server_name}/{media_id}"), delete(delete_media))
        .route(admin_v1!("/users/{user_id}/media"), get(list_user_media).delete(delete_user_media))
        .route(admin_v1!("/media/delete"), post(delete_by_age))
        .route(admin_v1!("/purge_media_cache"), post(purge_media_cache))
        .route(admin_v1!("/statistics/users/media"), get(usage_statistics))
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
    let n = media_admin::quarantine_in_room(&state, room_id.as_str()).await?;
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
    if !media_admin::delete_local(&state, &media_id).await? {
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
        "last_access_ts": m.last_access_ts,
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
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    dir: Option<String>,
}

/// A page of a user's media as the query asks (Synapse: oldest first by default).
async fn user_media_page(state: &AppState, user_id: &str, q: &ListQuery) -> Result<(Vec<MediaRow>, i64, i64)> {
    let user_id = parse_user_id(user_id)?;
    local_user(state, &user_id).await?;
    let (from, limit) = paging(q.from, q.limit)?;
    let order = match q.order_by.as_deref() {
        None | Some("created_ts") => MediaOrder::CreatedTs,
        Some("media_id") => MediaOrder::MediaId,
        Some("upload_name") => MediaOrder::UploadName,
        Some("last_access_ts") => MediaOrder::LastAccessTs,
        Some("media_length") => MediaOrder::MediaLength,
        Some("media_type") => MediaOrder::MediaType,
        Some("quarantined_by") => MediaOrder::Quarantined,
        Some(other) => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}"))),
    };
    let backwards = descending(q.dir.as_deref())?;
    let (rows, total) =
        storage::media::list_by_uploader(&state.db, user_id.as_str(), order, backwards, from, limit).await?;
    Ok((rows, total, from))
}

async fn list_user_media(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>> {
    let (rows, total, from) = user_media_page(&state, &user_id, &q).await?;
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
    let (rows, _, _) = user_media_page(&state, &user_id, &q).await?;
    let mut deleted = Vec::with_capacity(rows.len());
    for m in rows {
        if media_admin::delete_local(&state, &m.media_id).await? {
            deleted.push(m.media_id);
        }
    }
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}

#[derive(Deserialize)]
struct DeleteByAgeQuery {
    before_ts: Option<i64>,
    #[serde(default)]
    size_gt: i64,
    #[serde(default = "keep")]
    keep_profiles: bool,
}

fn keep() -> bool {
    true
}

async fn delete_by_age(
    State(state): State<AppState>,
    Admin(_): Admin,
    Query(q): Query<DeleteByAgeQuery>,
) -> Result<Json<Value>> {
    let before_ts = q.before_ts.ok_or_else(|| Error::missing_param("Missing before_ts"))?;
    let deleted = media_admin::delete_unused_since(&state, before_ts, q.size_gt, q.keep_profiles).await?;
    Ok(Json(json!({ "total": deleted.len(), "deleted_media": deleted })))
}

#[derive(Deserialize)]
struct PurgeQuery {
    before_ts: Option<i64>,
}

async fn purge_media_cache(
    State(state): State<AppState>,
    Admin(_): Admin,
    Query(q): Query<PurgeQuery>,
) -> Result<Json<Value>> {
    let before_ts = q.before_ts.ok_or_else(|| Error::missing_param("Missing before_ts"))?;
    let deleted = media_admin::purge_remote_cache(&state, before_ts).await?;
    Ok(Json(json!({ "deleted": deleted })))
}

#[derive(Deserialize)]
struct UsageParams {
    from: Option<i64>,
    limit: Option<i64>,
    order_by: Option<String>,
    dir: Option<String>,
    from_ts: Option<i64>,
    until_ts: Option<i64>,
    search_term: Option<String>,
}

/// `GET /_synapse/admin/v1/statistics/users/media`: media count and bytes per uploader.
async fn usage_statistics(
    State(state): State<AppState>,
    Admin(_): Admin,
    Query(q): Query<UsageParams>,
) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let order = match q.order_by.as_deref() {
        None | Some("user_id") => UsageOrder::UserId,
        Some("displayname") => UsageOrder::DisplayName,
        Some("media_length") => UsageOrder::MediaLength,
        Some("media_count") => UsageOrder::MediaCount,
        Some(other) => return Err(Error::invalid_param(format!("Unknown value for order_by: {other}"))),
    };
    let from_ts = q.from_ts.unwrap_or(0);
    if from_ts < 0 || q.until_ts.is_some_and(|t| t < 0) {
        return Err(Error::invalid_param("from_ts and until_ts must not be negative"));
    }
    if q.until_ts.is_some_and(|t| t <= from_ts) {
        return Err(Error::invalid_param("until_ts must be greater than from_ts"));
    }
    if q.search_term.as_deref() == Some("") {
        return Err(Error::invalid_param("search_term cannot be an empty string"));
    }
    let query = UsageQuery {
        from_ts,
        until_ts: q.until_ts.unwrap_or(i64::MAX),
        search_term: q.search_term.as_deref(),
        order,
        descending: descending(q.dir.as_deref())?,
        from,
        limit,
    };
    let (users, total) = storage::media::usage_by_user(&state.db, &query).await?;
    let listed: Vec<Value> = users
        .iter()
        .map(|u| {
            json!({
                "user_id": u.user_id,
                "displayname": u.displayname,
                "media_count": u.media_count,
                "media_length": u.media_length,
            })
        })
        .collect();
    let mut body = json!({ "users": listed, "total": total });
    if let Some(next) = next_token(from, users.len(), total) {
        body["next_token"] = json!(next);
    }
    Ok(Json(body))
}
