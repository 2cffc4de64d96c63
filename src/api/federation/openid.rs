//! `GET /_matrix/federation/v1/openid/userinfo`: who an OpenID token belongs to. Called by
//! any service the user handed the token to, so it is not signed.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::accounts::openid;
use crate::error::{Error, Result};
use crate::http::extract::Query;

pub fn router() -> Router<AppState> {
    Router::new().route("/_matrix/federation/v1/openid/userinfo", get(userinfo))
}

#[derive(Deserialize)]
struct UserinfoQuery {
    access_token: Option<String>,
}

async fn userinfo(State(state): State<AppState>, Query(q): Query<UserinfoQuery>) -> Result<Json<Value>> {
    let token = q.access_token.ok_or_else(|| Error::missing_param("Missing access_token"))?;
    let user_id = openid::owner(&state, &token).await?.ok_or_else(|| Error::unknown_token(false))?;
    Ok(Json(json!({ "sub": user_id })))
}
