//! `GET /_matrix/federation/v1/hierarchy/{roomId}`: a space and its children, for another
//! server's hierarchy walk.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::RoomId;
use serde::Deserialize;
use serde_json::Value;

use super::FederationAuth;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{Path, Query};
use crate::rooms::hierarchy;

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/federation/v1/hierarchy/{room_id}", get(get_hierarchy))
}

#[derive(Deserialize)]
struct HierarchyQuery {
    #[serde(default)]
    suggested_only: Option<bool>,
}

async fn get_hierarchy(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(room_id): Path<String>,
    Query(q): Query<HierarchyQuery>,
) -> Result<Json<Value>> {
    let room_id = RoomId::parse(&room_id).map_err(|_| Error::invalid_param("Invalid room ID"))?;
    hierarchy::for_server(&state, &origin, &room_id, q.suggested_only.unwrap_or(false))
        .await?
        .map(Json)
        .ok_or_else(|| Error::not_found("Unknown room or not accessible"))
}
