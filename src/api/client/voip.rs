//! VoIP: credentials for the TURN server, in the TURN REST API form coturn checks with
//! `use-auth-secret`: username `expiry:user_id`, password base64(HMAC-SHA1(secret, username)).

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha1::Sha1;

use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::Auth;
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/voip/turnServer"), get(turn_server))
}

async fn turn_server(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let turn = &state.config.turn;
    // Without a TURN server, an empty object (as Synapse).
    let Some(secret) = turn.shared_secret.as_deref().filter(|_| !turn.uris.is_empty()) else {
        return Ok(Json(json!({})));
    };
    let expiry = storage::now_ms() / 1000 + i64::try_from(turn.ttl_seconds).unwrap_or(i64::MAX / 2);
    let username = format!("{expiry}:{}", me.user_id);
    let password = credential(secret, &username)?;
    Ok(Json(json!({ "username": username, "password": password, "uris": turn.uris, "ttl": turn.ttl_seconds })))
}

/// base64(HMAC-SHA1(secret, username)), the password coturn derives for `username`.
fn credential(secret: &str, username: &str) -> Result<String> {
    let mut mac = Hmac::<Sha1>::new_from_slice(secret.as_bytes()).map_err(|e| Error::Internal(e.into()))?;
    mac.update(username.as_bytes());
    Ok(STANDARD.encode(mac.finalize().into_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_matches_rfc2202_vector() {
        // RFC 2202 test case 2: HMAC-SHA1("Jefe", "what do ya want for nothing?").
        let expected = STANDARD.encode([
            0xef, 0xfc, 0xdf, 0x6a, 0xe5, 0xeb, 0x2f, 0xa2, 0xd2, 0x74, 0x16, 0xd5, 0xf1, 0x84, 0xdf, 0x9c, 0x25, 0x9a,
            0x7c, 0x79,
        ]);
        assert_eq!(credential("Jefe", "what do ya want for nothing?").unwrap(), expected);
    }
}
