//! Our media for other servers (authenticated media, `/_matrix/federation/v1/media/...`):
//! `multipart/mixed` answers of the (empty) metadata object and the bytes, streamed from disk.

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use futures::{StreamExt, stream};
use serde::Deserialize;
use tokio_util::io::ReaderStream;

use super::FederationAuth;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{Path, Query};
use crate::media::{self, Access, Served, ThumbnailQuery, multipart};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/federation/v1/media/download/{media_id}", get(download))
        .route("/_matrix/federation/v1/media/thumbnail/{media_id}", get(thumbnail))
}

#[derive(Deserialize)]
struct DownloadQuery {
    timeout_ms: Option<u64>,
}

async fn download(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    Path(media_id): Path<String>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response> {
    let wait = query.timeout_ms.unwrap_or(media::DEFAULT_WAIT_MS);
    let served =
        media::download(&state, &state.config.server_name, &media_id, None, Access::Authenticated, wait).await?;
    serve_multipart(&state, served).await
}

async fn thumbnail(
    State(state): State<AppState>,
    FederationAuth(_origin): FederationAuth,
    Path(media_id): Path<String>,
    Query(query): Query<ThumbnailQuery>,
) -> Result<Response> {
    let served =
        media::thumbnail_for(&state, &state.config.server_name, &media_id, &query, Access::Authenticated).await?;
    serve_multipart(&state, served).await
}

/// The media as the second part of a `multipart/mixed` answer.
async fn serve_multipart(state: &AppState, served: Served) -> Result<Response> {
    let file = media::open(state, &served.content).await?;
    let framing = multipart::frame(&served.content_type, &served.disposition);
    let length = framing.head.len() as u64 + served.content.size + framing.tail.len() as u64;
    let content_type = HeaderValue::from_str(&framing.content_type).map_err(|e| Error::Internal(e.into()))?;
    let body = stream::iter([Ok(framing.head)])
        .chain(ReaderStream::with_capacity(file, 64 * 1024))
        .chain(stream::iter([Ok(framing.tail)]));
    let headers = [(header::CONTENT_TYPE, content_type), (header::CONTENT_LENGTH, HeaderValue::from(length))];
    Ok((headers, Body::from_stream(body)).into_response())
}
