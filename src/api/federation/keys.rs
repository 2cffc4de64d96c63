//! The key server: `GET /_matrix/key/v2/server` (our keys, self-signed) and the notary
//! endpoints `GET /_matrix/key/v2/query/{serverName}` and `POST /_matrix/key/v2/query`
//! (other servers' keys, co-signed by us).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use ruma::{CanonicalJsonObject, OwnedServerName};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::AppState;
use crate::error::{Error, Result};
use crate::federation::keys;
use crate::http::extract::{self, Path, Query};
use crate::storage::now_ms;

/// The most servers one notary query may ask for.
const MAX_QUERIED_SERVERS: usize = 100;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/key/v2/server", get(server_keys))
        .route("/_matrix/key/v2/server/{key_id}", get(server_keys))
        .route("/_matrix/key/v2/query", post(query_keys))
        .route("/_matrix/key/v2/query/{server_name}", get(query_server_keys))
}

async fn server_keys(State(state): State<AppState>) -> Result<Json<CanonicalJsonObject>> {
    keys::own_key_response(&state).map(Json)
}

#[derive(Deserialize)]
struct Criteria {
    #[serde(default)]
    minimum_valid_until_ts: Option<i64>,
}

async fn query_server_keys(
    State(state): State<AppState>,
    Path(server_name): Path<String>,
    Query(criteria): Query<Criteria>,
) -> Result<Json<Value>> {
    let server = OwnedServerName::try_from(server_name).map_err(|_| Error::invalid_param("Invalid server name"))?;
    let minimum = criteria.minimum_valid_until_ts.unwrap_or_else(now_ms);
    let answer = keys::notary_response(&state, &server, minimum).await?;
    Ok(Json(json!({ "server_keys": answer.into_iter().collect::<Vec<_>>() })))
}

#[derive(Deserialize)]
struct QueryBody {
    server_keys: BTreeMap<String, BTreeMap<String, Criteria>>,
}

async fn query_keys(
    State(state): State<AppState>,
    extract::Json(body): extract::Json<QueryBody>,
) -> Result<Json<Value>> {
    if body.server_keys.len() > MAX_QUERIED_SERVERS {
        return Err(Error::bad_json(format!("At most {MAX_QUERIED_SERVERS} servers per query")));
    }
    let now = now_ms();
    let queries = body.server_keys.into_iter().filter_map(|(name, key_criteria)| {
        let server = OwnedServerName::try_from(name).ok()?;
        // The keys must last until the latest time any criterion asks for.
        let minimum = key_criteria.values().filter_map(|c| c.minimum_valid_until_ts).max().unwrap_or(now);
        Some((server, minimum))
    });
    let state = &state;
    let answers = futures::future::join_all(
        queries.map(|(server, minimum)| async move { keys::notary_response(state, &server, minimum).await }),
    )
    .await;
    let mut server_keys = Vec::new();
    for answer in answers {
        server_keys.extend(answer?);
    }
    Ok(Json(json!({ "server_keys": server_keys })))
}
