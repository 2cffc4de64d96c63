//! Server notices: `POST /v1/send_server_notice`.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::admin_v1;
use crate::AppState;
use crate::admin::notices;
use crate::error::Result;
use crate::http::extract::{self, Admin};

pub fn router() -> Router<AppState> {
    Router::new().route(admin_v1!("/send_server_notice"), post(send))
}

#[derive(Deserialize)]
struct NoticeBody {
    user_id: OwnedUserId,
    content: serde_json::Map<String, Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    state_key: Option<String>,
}

async fn send(
    State(state): State<AppState>,
    Admin(_): Admin,
    extract::Json(body): extract::Json<NoticeBody>,
) -> Result<Json<Value>> {
    let kind = body.kind.as_deref().unwrap_or("m.room.message");
    let event_id = notices::send(&state, &body.user_id, kind, body.state_key, Value::Object(body.content)).await?;
    Ok(Json(json!({ "event_id": event_id })))
}
