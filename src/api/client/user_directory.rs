//! `POST /user_directory/search`: users by ID or display name (`accounts::directory`).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::accounts::directory;
use crate::error::Result;
use crate::http::extract::{self, Auth};

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
    Auth(me): Auth,
    extract::Json(body): extract::Json<SearchBody>,
) -> Result<Json<Value>> {
    let limit = body.limit.min(100) as usize;
    let (found, limited) = directory::search(&state, &me.user_id, &body.search_term, limit).await?;
    let results: Vec<Value> = found
        .iter()
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
