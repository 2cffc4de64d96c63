//! Application services: `POST /_matrix/client/v1/appservice/{appserviceId}/ping`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::appservice;
use crate::error::Result;
use crate::http::extract::{self, Auth, Path};

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/client/v1/appservice/{appservice_id}/ping", post(ping))
}

#[derive(Deserialize)]
struct PingBody {
    #[serde(default)]
    transaction_id: Option<String>,
}

async fn ping(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(id): Path<String>,
    extract::Json(body): extract::Json<PingBody>,
) -> Result<Json<Value>> {
    let duration_ms = appservice::ping(&state, me.appservice.as_deref(), &id, body.transaction_id.as_deref()).await?;
    Ok(Json(json!({ "duration_ms": duration_ms })))
}
