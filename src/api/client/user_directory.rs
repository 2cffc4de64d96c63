//! `POST /user_directory/search`: local users by ID or display name.

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::error::Result;
use crate::http::extract::{self, Auth};
use crate::storage;

pub fn router() -> Router<AppState> {
    Router::new().route(v3!("/user_directory/search"), post(search))
}

#[derive(Deserialize)]
struct SearchBody {
    search_term: String,
    #[serde(default = "default_limit")]
    limit: u32,
}

fn default_limit() -> u32 {
    10
}

async fn search(
    State(state): State<AppState>,
    Auth(_): Auth,
    extract::Json(body): extract::Json<SearchBody>,
) -> Result<Json<Value>> {
    let limit = body.limit.min(100) as i64;
    // One more than asked tells whether the answer was cut.
    let rows = storage::users::search(&state.db, &body.search_term, limit + 1).await?;
    let limited = rows.len() as i64 > limit;
    let results: Vec<Value> = rows
        .iter()
        .take(limit as usize)
        .map(|u| {
            let mut user = json!({ "user_id": u.user_id });
            if let Some(name) = &u.displayname {
                user["display_name"] = json!(name);
            }
            if let Some(url) = &u.avatar_url {
                user["avatar_url"] = json!(url);
            }
            user
        })
        .collect();
    Ok(Json(json!({ "results": results, "limited": limited })))
}
