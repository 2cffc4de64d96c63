//! Our published room directory for other servers: `GET` and `POST /publicRooms`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::Value;

use super::FederationAuth;
use crate::AppState;
use crate::directory::{self, PublicRoomsRequest};
use crate::error::Result;
use crate::http::extract::{self, Query};

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/federation/v1/publicRooms", get(public_rooms_get).post(public_rooms_post))
}

#[derive(Deserialize)]
struct PublicRoomsQuery {
    limit: Option<u64>,
    since: Option<String>,
    include_all_networks: Option<bool>,
    third_party_instance_id: Option<String>,
}

async fn public_rooms_get(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    Query(q): Query<PublicRoomsQuery>,
) -> Result<Json<Value>> {
    let request = PublicRoomsRequest {
        limit: q.limit,
        since: q.since,
        filter: None,
        include_all_networks: q.include_all_networks,
        third_party_instance_id: q.third_party_instance_id,
    };
    directory::local_public_rooms(&state, request).await.map(Json)
}

async fn public_rooms_post(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    extract::Json(body): extract::Json<PublicRoomsRequest>,
) -> Result<Json<Value>> {
    directory::local_public_rooms(&state, body).await.map(Json)
}
