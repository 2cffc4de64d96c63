//! Content repository: uploads (`/_matrix/media/v3/upload`, `/_matrix/media/v1/create`),
//! authenticated downloads, thumbnails, config and previews under `/_matrix/client/v1/media`,
//! and the deprecated unauthenticated `/_matrix/media/v3` ones, frozen at the configured cut-over.
//!
//! Upload bodies are streamed by taking the raw `Body`, which the router's `DefaultBodyLimit`
//! does not apply to: the media size limit is enforced while streaming instead.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::io::ReaderStream;

use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{Auth, Path, Query};
use crate::media::{self, Access, Served, ThumbnailQuery, UploadInfo};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/_matrix/media/v3/upload", post(upload))
        .route("/_matrix/media/v1/create", post(create))
        .route("/_matrix/media/v3/upload/{server_name}/{media_id}", put(upload_to_created))
        .route("/_matrix/client/v1/media/config", get(config))
        .route("/_matrix/client/v1/media/download/{server_name}/{media_id}", get(download))
        .route("/_matrix/client/v1/media/download/{server_name}/{media_id}/{file_name}", get(download))
        .route("/_matrix/client/v1/media/thumbnail/{server_name}/{media_id}", get(thumbnail))
        .route("/_matrix/client/v1/media/preview_url", get(preview_url))
        .route("/_matrix/media/v3/config", get(config))
        .route("/_matrix/media/v3/preview_url", get(preview_url))
        .route("/_matrix/media/v3/download/{server_name}/{media_id}", get(legacy_download))
        .route("/_matrix/media/v3/download/{server_name}/{media_id}/{file_name}", get(legacy_download))
        .route("/_matrix/media/v3/thumbnail/{server_name}/{media_id}", get(legacy_thumbnail))
}

/// The spec's recommended policy for served content.
const CONTENT_SECURITY_POLICY: &str = "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; \
                                       style-src 'unsafe-inline'; object-src 'self';";

async fn config(State(state): State<AppState>, Auth(_): Auth) -> Json<Value> {
    Json(json!({ "m.upload.size": state.config.media.max_upload_bytes }))
}

#[derive(Deserialize)]
struct UploadQuery {
    filename: Option<String>,
}

fn upload_info(headers: &HeaderMap, file_name: Option<String>) -> UploadInfo {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .unwrap_or("application/octet-stream");
    UploadInfo {
        content_type: content_type.to_owned(),
        file_name: file_name.filter(|n| !n.is_empty()),
        content_length: headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok()),
    }
}

async fn upload(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    let info = upload_info(&headers, query.filename);
    let media_id = media::upload(&state, &me.user_id, info, body.into_data_stream()).await?;
    Ok(Json(json!({ "content_uri": media::mxc(&state.config.server_name, &media_id) })))
}

async fn create(State(state): State<AppState>, Auth(me): Auth) -> Result<Json<Value>> {
    let (media_id, expires) = media::create(&state, &me.user_id).await?;
    Ok(Json(json!({
        "content_uri": media::mxc(&state.config.server_name, &media_id),
        "unused_expires_at": expires,
    })))
}

#[derive(Deserialize)]
struct MediaPath {
    server_name: String,
    media_id: String,
    /// The file name asked for in the download path, replacing the uploaded one.
    file_name: Option<String>,
}

async fn upload_to_created(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(path): Path<MediaPath>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    if path.server_name != state.config.server_name || !media::is_valid_media_id(&path.media_id) {
        return Err(Error::not_found("Unknown media ID"));
    }
    let media_id = &path.media_id;
    let info = upload_info(&headers, query.filename);
    media::upload_pending(&state, &me.user_id, media_id, info, body.into_data_stream()).await?;
    Ok(Json(json!({})))
}

#[derive(Deserialize)]
struct DownloadQuery {
    timeout_ms: Option<u64>,
}

async fn download(
    State(state): State<AppState>,
    Auth(_): Auth,
    Path(path): Path<MediaPath>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response> {
    serve_download(&state, &path, Access::Authenticated, query).await
}

async fn legacy_download(
    State(state): State<AppState>,
    Path(path): Path<MediaPath>,
    Query(query): Query<DownloadQuery>,
) -> Result<Response> {
    serve_download(&state, &path, Access::Legacy, query).await
}

async fn serve_download(state: &AppState, path: &MediaPath, access: Access, query: DownloadQuery) -> Result<Response> {
    let wait = query.timeout_ms.unwrap_or(media::DEFAULT_WAIT_MS);
    let served =
        media::download(state, &path.server_name, &path.media_id, path.file_name.as_deref(), access, wait).await?;
    serve_file(state, &served).await
}

async fn thumbnail(
    State(state): State<AppState>,
    Auth(_): Auth,
    Path(path): Path<MediaPath>,
    Query(query): Query<ThumbnailQuery>,
) -> Result<Response> {
    let served = media::thumbnail_for(&state, &path.server_name, &path.media_id, &query, Access::Authenticated).await?;
    serve_file(&state, &served).await
}

async fn legacy_thumbnail(
    State(state): State<AppState>,
    Path(path): Path<MediaPath>,
    Query(query): Query<ThumbnailQuery>,
) -> Result<Response> {
    let served = media::thumbnail_for(&state, &path.server_name, &path.media_id, &query, Access::Legacy).await?;
    serve_file(&state, &served).await
}

/// Streams a stored file with the headers the spec asks of served media.
async fn serve_file(state: &AppState, served: &Served) -> Result<Response> {
    let file = media::open(state, &served.content).await?;
    let content_type =
        HeaderValue::from_str(&served.content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(&served.disposition).map_err(|e| Error::Internal(e.into()))?;
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CONTENT_LENGTH, HeaderValue::from(served.content.size)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin")),
    ];
    Ok((headers, Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024))).into_response())
}

#[derive(Deserialize)]
struct PreviewQuery {
    url: Option<String>,
}

/// The `ts` parameter (a preferred point in time) is not read: the newest preview is served,
/// as the spec allows.
async fn preview_url(
    State(state): State<AppState>,
    Auth(me): Auth,
    Query(query): Query<PreviewQuery>,
) -> Result<Json<Value>> {
    let url = query.url.ok_or_else(|| Error::missing_param("Missing url"))?;
    media::preview::preview(&state, &me.user_id, &url).await.map(Json)
}
