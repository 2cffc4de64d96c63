//! Send-to-device messaging.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use ruma::OwnedUserId;
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::e2ee::to_device;
use crate::error::Result;
use crate::http::extract::{self, Auth, Path};

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/sendToDevice/{event_type}/{txn_id}"), put(send))
}

#[derive(Deserialize)]
struct SendBody {
    messages: BTreeMap<OwnedUserId, BTreeMap<String, Value>>,
}

async fn send(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path((event_type, txn_id)): Path<(String, String)>,
    extract::Json(body): extract::Json<SendBody>,
) -> Result<Json<Value>> {
    to_device::send(&state, &me, &event_type, &txn_id, &body.messages).await?;
    Ok(Json(json!({})))
}
