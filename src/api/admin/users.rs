//! Users: list, query, create or modify, admin flag, deactivation, password reset,
//! shadow-ban, suspension, login as a user, devices, whois, joined rooms.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use ruma::{OwnedUserId, UserId};
use serde::{Deserialize, Deserializer};
use serde_json::{Value, json};

use super::{admin_v1, admin_v2, descending, next_token};
use crate::AppState;
use crate::accounts;
use crate::admin::users::{self, Changes, local_user};
use crate::e2ee::device_lists;
use crate::error::{Error, Result};
use crate::http::extract::{self, Admin, Path, Query};
use crate::storage::{self, devices::DeviceRow, users::Flag, users::UserOrder, users::UserQuery, users::UserRow};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(admin_v2!("/users"), get(list))
        .route(admin_v2!("/users/{user_id}"), get(query).put(create_or_modify))
        .route(admin_v1!("/users/{user_id}/admin"), get(get_admin).put(set_admin))
        .route(admin_v1!("/deactivate/{user_id}"), post(deactivate))
        .route(admin_v1!("/reset_password/{user_id}"), post(reset_password))
        .route(admin_v1!("/users/{user_id}/shadow_ban"), post(shadow_ban).delete(unshadow_ban))
        .route(admin_v1!("/suspend/{user_id}"), put(suspend))
        .route(admin_v1!("/users/{user_id}/login"), post(login_as))
        .route(admin_v1!("/users/{user_id}/joined_rooms"), get(joined_rooms))
        .route(admin_v1!("/whois/{user_id}"), get(whois))
        .route(admin_v2!("/users/{user_id}/devices"), get(list_devices).post(add_device))
        .route(
            admin_v2!("/users/{user_id}/devices/{device_id}"),
            get(get_device).put(rename_device).delete(delete_device),
        )
        .route(admin_v2!("/users/{user_id}/delete_devices"), post(delete_devices))
}

/// A user ID from the path.
pub(crate) fn parse_user_id(raw: &str) -> Result<OwnedUserId> {
    UserId::parse(raw).map_err(|_| Error::invalid_param("Invalid user ID"))
}

/// A user as the admin API shows it (Synapse's fields; no third-party IDs here).
fn user_json(u: &UserRow) -> Value {
    json!({
        "name": u.user_id,
        "displayname": u.displayname,
        "avatar_url": u.avatar_url,
        "threepids": [],
        "external_ids": [],
        "admin": u.is_admin,
        "is_guest": u.is_guest,
        "deactivated": u.deactivated,
        "erased": u.erased,
        "shadow_banned": u.shadow_banned,
        "locked": u.locked,
        "suspended": u.suspended,
        "creation_ts": u.created_ts / 1000,
        "user_type": null,
        "appservice_id": null,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    from: Option<i64>,
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default = "yes")]
    guests: bool,
    #[serde(default)]
    deactivated: bool,
    #[serde(default)]
    admins: Option<bool>,
    #[serde(default)]
    order_by: Option<String>,
    #[serde(default)]
    dir: Option<String>,
}

fn yes() -> bool {
    true
}

/// `from` and `limit` as the admin API takes them: non-negative, 100 items by default.
pub(super) fn paging(from: Option<i64>, limit: Option<i64>) -> Result<(i64, i64)> {
    let from = from.unwrap_or(0);
    let limit = limit.unwrap_or(100);
    if from < 0 || limit < 0 {
        return Err(Error::invalid_param("from and limit must not be negative"));
    }
    Ok((from, limit.min(1000)))
}

async fn list(State(state): State<AppState>, Admin(_): Admin, Query(q): Query<ListQuery>) -> Result<Json<Value>> {
    let (from, limit) = paging(q.from, q.limit)?;
    let order_by = match q.order_by.as_deref() {
        None | Some("name") => UserOrder::Name,
        Some("displayname") => UserOrder::DisplayName,
        Some("creation_ts") => UserOrder::CreationTs,
        Some("admin") => UserOrder::Admin,
        Some("deactivated") => UserOrder::Deactivated,
        Some("is_guest") => UserOrder::IsGuest,
        Some("shadow_banned") => UserOrder::ShadowBanned,
        Some("locked") => UserOrder::Locked,
        Some(other) => return Err(Error::invalid_param(format!("Unknown order_by {other}"))),
    };
    let query = UserQuery {
        name: q.name.filter(|n| !n.is_empty()),
        user_id: q.user_id.filter(|n| !n.is_empty()),
        guests: q.guests,
        deactivated: q.deactivated,
        admins: q.admins,
        order_by,
        descending: descending(q.dir.as_deref())?,
        from,
        limit,
    };
    let (rows, total) = storage::users::list(&state.db, &query).await?;
    let mut body = json!({ "users": rows.iter().map(user_json).collect::<Vec<_>>(), "total": total });
    if let Some(next) = next_token(from, rows.len(), total) {
        // A string here, as Synapse has it.
        body["next_token"] = json!(next.to_string());
    }
    Ok(Json(body))
}

async fn query(State(state): State<AppState>, Admin(_): Admin, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let user = local_user(&state, &parse_user_id(&user_id)?).await?;
    Ok(Json(user_json(&user)))
}

/// A field that may be absent (unchanged), null (cleared) or set.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> std::result::Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct UserBody {
    #[serde(default)]
    password: Option<String>,
    #[serde(default = "yes")]
    logout_devices: bool,
    #[serde(default, deserialize_with = "present")]
    displayname: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    avatar_url: Option<Option<String>>,
    #[serde(default)]
    admin: Option<bool>,
    #[serde(default)]
    deactivated: Option<bool>,
    #[serde(default)]
    locked: Option<bool>,
}

async fn create_or_modify(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<UserBody>,
) -> Result<Response> {
    let user_id = parse_user_id(&user_id)?;
    if body.password.as_ref().is_some_and(|p| p.len() > 512) {
        return Err(Error::invalid_param("Invalid password"));
    }
    if user_id == me.user_id && (body.admin == Some(false) || body.deactivated == Some(true)) {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "You may not demote or deactivate yourself."));
    }
    let changes = Changes {
        password: body.password,
        logout_devices: body.logout_devices,
        displayname: body.displayname,
        avatar_url: body.avatar_url,
        admin: body.admin,
        deactivated: body.deactivated,
        locked: body.locked,
    };
    let created = users::create_or_modify(&state, &user_id, changes).await?;
    let user = local_user(&state, &user_id).await?;
    let status = if created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(user_json(&user))).into_response())
}

async fn get_admin(State(state): State<AppState>, Admin(_): Admin, Path(user_id): Path<String>) -> Result<Json<Value>> {
    let user = local_user(&state, &parse_user_id(&user_id)?).await?;
    Ok(Json(json!({ "admin": user.is_admin })))
}

#[derive(Deserialize)]
struct AdminBody {
    admin: bool,
}

async fn set_admin(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<AdminBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    if user_id == me.user_id && !body.admin {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "You may not demote yourself."));
    }
    local_user(&state, &user_id).await?;
    let changes = Changes { admin: Some(body.admin), ..Default::default() };
    users::create_or_modify(&state, &user_id, changes).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeactivateBody {
    #[serde(default)]
    erase: bool,
}

async fn deactivate(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<DeactivateBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    accounts::deactivate(&state, &user_id, body.erase).await?;
    tracing::info!(%user_id, erase = body.erase, "deactivated by an admin");
    Ok(Json(json!({ "id_server_unbind_result": "success" })))
}

#[derive(Deserialize)]
struct ResetPasswordBody {
    new_password: String,
    #[serde(default = "yes")]
    logout_devices: bool,
}

async fn reset_password(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<ResetPasswordBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    if body.new_password.len() > 512 {
        return Err(Error::invalid_param("Invalid password"));
    }
    let user = local_user(&state, &user_id).await?;
    if user.deactivated {
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "The user is deactivated"));
    }
    let changes =
        Changes { password: Some(body.new_password), logout_devices: body.logout_devices, ..Default::default() };
    users::create_or_modify(&state, &user_id, changes).await?;
    Ok(Json(json!({})))
}

async fn shadow_ban(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    users::set_flag(&state, &parse_user_id(&user_id)?, Flag::ShadowBanned, true).await?;
    Ok(Json(json!({})))
}

async fn unshadow_ban(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    users::set_flag(&state, &parse_user_id(&user_id)?, Flag::ShadowBanned, false).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct SuspendBody {
    suspend: bool,
}

async fn suspend(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<SuspendBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    users::set_flag(&state, &user_id, Flag::Suspended, body.suspend).await?;
    Ok(Json(json!({ format!("user_{user_id}_suspended"): body.suspend })))
}

#[derive(Deserialize)]
struct LoginBody {
    #[serde(default)]
    valid_until_ms: Option<i64>,
}

async fn login_as(
    State(state): State<AppState>,
    Admin(me): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<LoginBody>,
) -> Result<Json<Value>> {
    let session = users::login_as(&state, &me.user_id, &parse_user_id(&user_id)?, body.valid_until_ms).await?;
    Ok(Json(json!({ "access_token": session.access_token })))
}

async fn joined_rooms(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    let rooms = storage::rooms::rooms_of_user(&state.db, user_id.as_str(), "join").await?;
    Ok(Json(json!({ "total": rooms.len(), "joined_rooms": rooms })))
}

/// The spec's whois answer: each device's last known connection.
pub(crate) async fn whois_json(state: &AppState, user_id: &UserId) -> Result<Value> {
    local_user(state, user_id).await?;
    let mut devices = serde_json::Map::new();
    for d in storage::devices::list(&state.db, user_id.as_str()).await? {
        let connections: Vec<Value> = match (&d.last_seen_ip, d.last_seen_ts) {
            (Some(ip), Some(ts)) => vec![json!({ "ip": ip, "last_seen": ts })],
            _ => Vec::new(),
        };
        devices.insert(d.device_id.clone(), json!({ "sessions": [{ "connections": connections }] }));
    }
    Ok(json!({ "user_id": user_id, "devices": devices }))
}

async fn whois(State(state): State<AppState>, Admin(_): Admin, Path(user_id): Path<String>) -> Result<Json<Value>> {
    Ok(Json(whois_json(&state, &parse_user_id(&user_id)?).await?))
}

fn device_json(user_id: &UserId, d: &DeviceRow) -> Value {
    json!({
        "user_id": user_id,
        "device_id": d.device_id,
        "display_name": d.display_name,
        "last_seen_ip": d.last_seen_ip,
        "last_seen_ts": d.last_seen_ts,
    })
}

async fn list_devices(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let devices = storage::devices::list(&state.db, user_id.as_str()).await?;
    let list: Vec<Value> = devices.iter().map(|d| device_json(&user_id, d)).collect();
    Ok(Json(json!({ "total": list.len(), "devices": list })))
}

#[derive(Deserialize)]
struct NewDeviceBody {
    device_id: String,
}

async fn add_device(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<NewDeviceBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    if body.device_id.is_empty() || body.device_id.len() > 512 {
        return Err(Error::invalid_param("Invalid device ID"));
    }
    let mut tx = state.db.begin().await?;
    storage::devices::upsert(&mut tx, user_id.as_str(), &body.device_id, None).await?;
    tx.commit().await?;
    // The device ID may be that of a deleted device, whose key status may still be cached.
    state.key_status.forget_user(&user_id);
    Ok(Json(json!({})))
}

async fn get_device(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let device = storage::devices::get(&state.db, user_id.as_str(), &device_id)
        .await?
        .ok_or_else(|| Error::not_found("Device not found"))?;
    Ok(Json(device_json(&user_id, &device)))
}

#[derive(Deserialize)]
struct RenameBody {
    #[serde(default)]
    display_name: Option<String>,
}

async fn rename_device(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((user_id, device_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<RenameBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let mut tx = state.db.begin().await?;
    let found = storage::devices::rename(&mut tx, user_id.as_str(), &device_id, body.display_name.as_deref()).await?;
    tx.commit().await?;
    if !found {
        return Err(Error::not_found("Device not found"));
    }
    Ok(Json(json!({})))
}

async fn delete_device(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path((user_id, device_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let mut tx = state.db.begin().await?;
    storage::devices::delete(&mut tx, user_id.as_str(), &device_id).await?;
    tx.commit().await?;
    state.token_cache.forget_user(&user_id);
    device_lists::devices_changed(&state, &user_id, &[device_id]).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DeleteDevicesBody {
    devices: Vec<String>,
}

async fn delete_devices(
    State(state): State<AppState>,
    Admin(_): Admin,
    Path(user_id): Path<String>,
    extract::Json(body): extract::Json<DeleteDevicesBody>,
) -> Result<Json<Value>> {
    let user_id = parse_user_id(&user_id)?;
    local_user(&state, &user_id).await?;
    let mut tx = state.db.begin().await?;
    for device_id in &body.devices {
        storage::devices::delete(&mut tx, user_id.as_str(), device_id).await?;
    }
    tx.commit().await?;
    state.token_cache.forget_user(&user_id);
    device_lists::devices_changed(&state, &user_id, &body.devices).await?;
    Ok(Json(json!({})))
}
