//! `PUT /_matrix/federation/v1/send/{txnId}`: transactions of PDUs and EDUs pushed to us.

use axum::extract::State;
use axum::routing::put;
use axum::{Json, Router};
use serde_json::Value;

use super::FederationAuth;
use crate::AppState;
use crate::error::Result;
use crate::federation::transaction::{self, Transaction};
use crate::http::extract::{self, Path};

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/federation/v1/send/{txn_id}", put(send))
}

async fn send(
    State(state): State<AppState>,
    FederationAuth(origin): FederationAuth,
    Path(txn_id): Path<String>,
    extract::Json(txn): extract::Json<Transaction>,
) -> Result<Json<Value>> {
    Ok(Json(transaction::receive(&state, &origin, &txn_id, txn).await?))
}
