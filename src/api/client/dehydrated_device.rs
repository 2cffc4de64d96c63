//! Dehydrated devices (MSC3814): `/unstable/org.matrix.msc3814.v1/dehydrated_device`.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::e2ee::dehydrated;
use crate::error::Result;
use crate::http::extract::{self, Auth, Path};

pub fn router() -> Router<AppState> {
    Router::new()
        .route(
            "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device",
            get(get_device).put(put_device).delete(delete_device),
        )
        .route("/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device/{device_id}/events", post(events))
}

async fn put_device(
    State(state): State<AppState>,
    Auth(me): Auth,
    extract::Json(body): extract::Json<dehydrated::NewDevice>,
) -> Result<Json<Value>> {
    Ok(Json(json!({ "device_id": dehydrated::put(&state, &me, body).await? })))
}

async fn get_device(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    Ok(Json(dehydrated::get(&state, &me).await?))
}

async fn delete_device(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    Ok(Json(json!({ "device_id": dehydrated::delete(&state, &me).await? })))
}

#[derive(Deserialize)]
struct EventsBody {
    #[serde(default)]
    next_batch: Option<String>,
}

async fn events(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(device_id): Path<String>,
    extract::Json(body): extract::Json<EventsBody>,
) -> Result<Json<Value>> {
    Ok(Json(dehydrated::events(&state, &me, &device_id, body.next_batch.as_deref()).await?))
}
