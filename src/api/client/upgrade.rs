//! Room upgrades.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::rooms::parse_room_id;
use super::v3;
use crate::AppState;
use crate::error::Result;
use crate::http::extract::{self, Auth, Path};
use crate::rooms;

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/rooms/{room_id}/upgrade"), post(upgrade))
}

#[derive(Deserialize)]
struct UpgradeRequest {
    new_version: String,
    #[serde(default)]
    additional_creators: Vec<OwnedUserId>,
}

async fn upgrade(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(room_id): Path<String>,
    extract::Json(body): extract::Json<UpgradeRequest>,
) -> Result<Json<Value>> {
    let room_id = parse_room_id(&room_id)?;
    let new_room =
        rooms::upgrade::upgrade_room(&state, &me.user_id, &room_id, &body.new_version, body.additional_creators)
            .await?;
    Ok(Json(json!({ "replacement_room": new_room })))
}
