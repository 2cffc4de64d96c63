//! Queries of other servers that need no room internals: the server version, profiles and
//! room aliases.

use std::collections::BTreeSet;

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::{OwnedRoomAliasId, OwnedUserId, UserId};
use serde::Deserialize;
use serde_json::{Value, json};

use super::FederationAuth;
use crate::error::{Error, Result};
use crate::http::extract::Query;
use crate::storage;
use crate::{AppState, accounts};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/version", get(version))
        .route("/_matrix/federation/v1/query/profile", get(profile))
        .route("/_matrix/federation/v1/query/directory", get(directory))
}

async fn version() -> Json<Value> {
    Json(json!({ "server": { "name": "Plexus", "version": env!("CARGO_PKG_VERSION") } }))
}

#[derive(Deserialize)]
struct ProfileQuery {
    user_id: Option<String>,
    field: Option<String>,
}

async fn profile(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    Query(query): Query<ProfileQuery>,
) -> Result<Json<Value>> {
    let user_id = query.user_id.ok_or_else(|| Error::missing_param("Missing user_id"))?;
    let user_id = OwnedUserId::try_from(user_id).map_err(|_| Error::invalid_param("Invalid user_id"))?;
    if user_id.server_name().as_str() != state.config.server_name {
        return Err(Error::invalid_param("The user is not on this server"));
    }
    match query.field.as_deref() {
        Some(field) if !accounts::profile::FIELDS.contains(&field) => Err(Error::not_found("No such profile field")),
        field => Ok(Json(Value::Object(accounts::profile::local(&state, &user_id, field).await?))),
    }
}

#[derive(Deserialize)]
struct DirectoryQuery {
    room_alias: Option<String>,
}

async fn directory(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    Query(query): Query<DirectoryQuery>,
) -> Result<Json<Value>> {
    let alias = query.room_alias.ok_or_else(|| Error::missing_param("Missing room_alias"))?;
    let alias = OwnedRoomAliasId::try_from(alias).map_err(|_| Error::invalid_param("Invalid room_alias"))?;
    let Some((room_id, _creator)) = storage::rooms::resolve_alias(&state.db, alias.as_str()).await? else {
        return Err(Error::not_found("Room alias not found"));
    };
    // Servers with joined members, ours first: the likeliest to answer a join.
    let mut servers = BTreeSet::new();
    for (member, membership, _) in storage::rooms::members(&state.db, &room_id).await? {
        if membership == "join"
            && let Ok(member) = <&UserId>::try_from(member.as_str())
            && member.server_name().as_str() != state.config.server_name
        {
            servers.insert(member.server_name().to_string());
        }
    }
    let servers: Vec<String> = std::iter::once(state.config.server_name.clone()).chain(servers).collect();
    Ok(Json(json!({ "room_id": room_id, "servers": servers })))
}
