//! Sync filters: upload and fetch.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::api::client::filter::FilterDefinition;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/user/{user_id}/filter"), post(create))
        .route(v3!("/user/{user_id}/filter/{filter_id}"), get(fetch))
}

async fn create(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    extract::Json(filter): extract::Json<Value>,
) -> Result<Json<Value>> {
    if user_id != me.user_id.as_str() {
        return Err(Error::forbidden("Cannot create filters for other users"));
    }
    // Validate against the spec's filter shape; the filter is kept as the client sent it.
    serde_json::from_value::<FilterDefinition>(filter.clone())
        .map_err(|e| Error::bad_json(format!("Invalid filter: {e}")))?;
    let mut tx = state.db.begin().await?;
    let id = storage::filters::create(&mut tx, me.user_id.as_str(), &filter.to_string()).await?;
    tx.commit().await?;
    Ok(Json(json!({ "filter_id": id.to_string() })))
}

async fn fetch(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((user_id, filter_id)): Path<(String, String)>,
) -> Result<Json<Value>> {
    if user_id != me.user_id.as_str() {
        return Err(Error::forbidden("Cannot read other users' filters"));
    }
    let not_found = || Error::not_found("No such filter");
    let id: i64 = filter_id.parse().map_err(|_| not_found())?;
    let text = storage::filters::get(&state.db, me.user_id.as_str(), id).await?.ok_or_else(not_found)?;
    Ok(Json(serde_json::from_str(&text).map_err(|e| Error::Internal(e.into()))?))
}
