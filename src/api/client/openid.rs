//! `POST /user/{userId}/openid/request_token`: a token that proves the user's identity to
//! another service.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::openid;
use crate::error::{Error, Result};
use crate::http::extract::{self, Auth, Path};

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/user/{user_id}/openid/request_token"), post(request_token))
}

async fn request_token(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(user_id): Path<String>,
    extract::Json(_body): extract::Json<serde_json::Map<String, Value>>,
) -> Result<Json<Value>> {
    if user_id != me.user_id.as_str() {
        return Err(Error::forbidden("Cannot request an OpenID token for another user"));
    }
    let token = openid::issue(&state, &me.user_id).await?;
    Ok(Json(json!({
        "access_token": token,
        "token_type": "Bearer",
        "matrix_server_name": state.config.server_name,
        "expires_in": openid::LIFETIME_SECS,
    })))
}
