//! Discovery: `/versions`, `.well-known`, `/capabilities`.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::v3;
use crate::AppState;
use crate::http::extract::Auth;

/// Spec versions whose client-server API this server speaks.
const SPEC_VERSIONS: &[&str] =
    &["r0.6.1", "v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8", "v1.9", "v1.10", "v1.11", "v1.12"];

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/client/versions", get(versions))
        .route("/.well-known/matrix/client", get(well_known_client))
        .route("/.well-known/matrix/server", get(well_known_server))
        .route(v3!("/capabilities"), get(capabilities))
}

async fn versions() -> Json<Value> {
    Json(json!({
        "versions": SPEC_VERSIONS,
        // Simplified sliding sync (MSC4186), which Element X requires.
        "unstable_features": { "org.matrix.simplified_msc3575": true, "org.matrix.msc3814": true },
    }))
}

async fn well_known_client(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.homeserver": { "base_url": state.config.base_url() } }))
}

async fn well_known_server(State(state): State<AppState>) -> Json<Value> {
    Json(json!({ "m.server": crate::federation::delegated_server_name(&state.config) }))
}

async fn capabilities(State(state): State<AppState>, Auth(_): Auth) -> Json<Value> {
    Json(json!({
        "capabilities": {
            "m.change_password": { "enabled": true },
            "m.set_displayname": { "enabled": true },
            "m.set_avatar_url": { "enabled": true },
            "m.3pid_changes": { "enabled": false },
            "m.get_login_token": { "enabled": state.config.login_via_existing_session },
            "m.room_versions": crate::rooms::versions::capability(),
        }
    }))
}
