//! `GET /_matrix/key/v2/server`: this server's signing keys, self-signed.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use ruma::CanonicalJsonValue;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{Error, Result};

/// How long other servers may cache our key response.
const VALIDITY_MS: i64 = 7 * 24 * 3600 * 1000;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
}

async fn server_keys(State(state): State<AppState>) -> Result<Json<Value>> {
    let key = &state.server_key;
    let body = json!({
        "server_name": state.config.server_name,
        "verify_keys": { &key.key_id: { "key": key.public_key_b64 } },
        "old_verify_keys": {},
        "valid_until_ts": crate::storage::now_ms() + VALIDITY_MS,
    });
    let CanonicalJsonValue::Object(mut object) =
        CanonicalJsonValue::try_from(body).map_err(|e| Error::Internal(e.into()))?
    else {
        return Err(Error::Internal(anyhow::anyhow!("key response is not an object")));
    };
    key.sign_json(&state.config.server_name, &mut object)?;
    Ok(Json(serde_json::to_value(object).map_err(|e| Error::Internal(e.into()))?))
}
