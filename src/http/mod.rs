//! HTTP assembly: the router of every API, the spec's CORS headers, body limits,
//! per-request tracing and metrics, and the JSON 404/405 answers.

pub mod connections;
pub mod extract;
pub mod guest_access;
pub mod rate_limit;

use std::time::Instant;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use crate::AppState;
use crate::error::Error;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(crate::api::client::router())
        .merge(crate::api::admin::router())
        .merge(crate::api::federation::router())
        .route("/metrics", axum::routing::get(metrics))
        .fallback(|| async { Error::unrecognized() })
        .method_not_allowed_fallback(|| async { Error::method_not_allowed() })
        .layer(DefaultBodyLimit::max(state.config.limits.max_request_bytes))
        .layer(middleware::from_fn(finish_writes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .layer(middleware::from_fn(cors))
        .with_state(state)
}

/// The spec's CORS headers on every response; `OPTIONS` is answered here for every path.
async fn cors(req: Request, next: Next) -> Response {
    let mut resp =
        if req.method() == Method::OPTIONS { StatusCode::NO_CONTENT.into_response() } else { next.run(req).await };
    let headers = resp.headers_mut();
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, HeaderValue::from_static("*"));
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, HEAD, POST, PUT, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("X-Requested-With, Content-Type, Authorization"),
    );
    resp
}

/// Runs a request that may write (any method but GET and HEAD) to its end even when its
/// client goes away: hyper drops the handler of a closed connection, and a write dropped
/// midway would roll back the appends of other rooms that share its group commit
/// (`storage::batch`). Synapse, too, finishes such requests. Reads, and the long-polls of
/// sliding sync (a POST), are still dropped, so that an abandoned long-poll frees its
/// resources at once and does not move its connection's position.
async fn finish_writes(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD) || req.uri().path().ends_with("/sync") {
        return next.run(req).await;
    }
    match tokio::spawn(next.run(req).in_current_span()).await {
        Ok(resp) => resp,
        Err(e) => Error::Internal(anyhow::anyhow!("request handler failed: {e}")).into_response(),
    }
}

/// A span per request with the path template, a log line with status and latency, and
/// request metrics.
async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let matched = req.extensions().get::<MatchedPath>().cloned();
    let path = matched.as_ref().map_or("unmatched", MatchedPath::as_str);
    let span = tracing::info_span!("request", %method, path = %path);
    let start = Instant::now();
    let resp = next.run(req).instrument(span.clone()).await;
    let status = resp.status().as_u16();
    let elapsed = start.elapsed();
    span.in_scope(|| {
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status >= 500 {
            tracing::warn!(status, latency_ms, "request failed");
        } else {
            tracing::info!(status, latency_ms, "request");
        }
    });
    // Labels are three strings per request: built only when something collects them.
    if state.metrics.is_none() {
        return resp;
    }
    let labels = [("method", method.to_string()), ("path", path.to_owned()), ("status", status.to_string())];
    metrics::counter!("plexus_http_requests_total", &labels).increment(1);
    metrics::histogram!("plexus_http_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
    resp
}

async fn metrics(State(state): State<AppState>) -> Result<Response, Error> {
    match &state.metrics {
        Some(handle) => Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], handle.render()).into_response()),
        None => Err(Error::unrecognized()),
    }
}
