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
use crate::media::thumbnail::{self, Method};
use crate::media::{self, Access, UploadInfo};
use crate::storage::media::StoredContent;

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

/// Types the spec allows to be served `inline`; anything else is an `attachment`.
const INLINE_TYPES: [&str; 26] = [
    "text/css",
    "text/plain",
    "text/csv",
    "application/json",
    "application/ld+json",
    "image/jpeg",
    "image/gif",
    "image/png",
    "image/apng",
    "image/webp",
    "image/avif",
    "video/mp4",
    "video/webm",
    "video/ogg",
    "video/quicktime",
    "audio/mp4",
    "audio/webm",
    "audio/aac",
    "audio/mpeg",
    "audio/ogg",
    "audio/wave",
    "audio/wav",
    "audio/x-wav",
    "audio/x-pn-wav",
    "audio/flac",
    "audio/x-flac",
];

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

impl MediaPath {
    /// The media ID, when it names local media that can exist. Remote media (fetched over
    /// federation) is not served yet, so it reads as not found.
    fn local_media_id(&self, state: &AppState) -> Result<&str> {
        if self.server_name != state.config.server_name || !media::is_valid_media_id(&self.media_id) {
            return Err(Error::not_found("Media not found"));
        }
        Ok(&self.media_id)
    }
}

async fn upload_to_created(
    State(state): State<AppState>,
    Auth(me): Auth,
    Path(path): Path<MediaPath>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>> {
    let media_id = path.local_media_id(&state).map_err(|_| Error::not_found("Unknown media ID"))?;
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
    let media_id = path.local_media_id(state)?;
    let wait = query.timeout_ms.unwrap_or(media::DEFAULT_WAIT_MS);
    let (row, content) = media::local_content(state, media_id, access, wait).await?;
    let content_type = row.content_type.as_deref().unwrap_or("application/octet-stream");
    let file_name = path.file_name.as_deref().or(row.file_name.as_deref());
    let disposition = content_disposition(is_inline_type(content_type), file_name);
    serve_file(state, &content, content_type, &disposition).await
}

#[derive(Deserialize)]
struct ThumbnailQuery {
    width: Option<u32>,
    height: Option<u32>,
    method: Option<String>,
    animated: Option<bool>,
    timeout_ms: Option<u64>,
}

async fn thumbnail(
    State(state): State<AppState>,
    Auth(_): Auth,
    Path(path): Path<MediaPath>,
    Query(query): Query<ThumbnailQuery>,
) -> Result<Response> {
    serve_thumbnail(&state, &path, Access::Authenticated, query).await
}

async fn legacy_thumbnail(
    State(state): State<AppState>,
    Path(path): Path<MediaPath>,
    Query(query): Query<ThumbnailQuery>,
) -> Result<Response> {
    serve_thumbnail(&state, &path, Access::Legacy, query).await
}

async fn serve_thumbnail(
    state: &AppState,
    path: &MediaPath,
    access: Access,
    query: ThumbnailQuery,
) -> Result<Response> {
    let width = query.width.ok_or_else(|| Error::missing_param("Missing width"))?;
    let height = query.height.ok_or_else(|| Error::missing_param("Missing height"))?;
    if width == 0 || height == 0 {
        return Err(Error::invalid_param("width and height must be positive"));
    }
    let method = match query.method.as_deref() {
        None => Method::Scale,
        Some(m) => Method::parse(m).ok_or_else(|| Error::invalid_param("method must be crop or scale"))?,
    };
    let media_id = path.local_media_id(state)?;
    let wait = query.timeout_ms.unwrap_or(media::DEFAULT_WAIT_MS);
    let (_, content) = media::local_content(state, media_id, access, wait).await?;
    let target = thumbnail::snap(width, height, method);
    let thumb = media::thumbnail(state, media_id, &content, target, query.animated.unwrap_or(false)).await?;
    let extension = thumb.content_type.strip_prefix("image/").map_or("bin", |t| if t == "jpeg" { "jpg" } else { t });
    let disposition = content_disposition(true, Some(&format!("thumbnail.{extension}")));
    serve_file(state, &thumb.content, &thumb.content_type, &disposition).await
}

/// Streams a stored file with the headers the spec asks of served media.
async fn serve_file(
    state: &AppState,
    content: &StoredContent,
    content_type: &str,
    disposition: &str,
) -> Result<Response> {
    let file = tokio::fs::File::open(state.media.store.path(content)).await.map_err(|e| {
        Error::Internal(anyhow::Error::new(e).context(format!("media file {} missing", content.sha256)))
    })?;
    let content_type =
        HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("application/octet-stream"));
    let disposition = HeaderValue::from_str(disposition).map_err(|e| Error::Internal(e.into()))?;
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_DISPOSITION, disposition),
        (header::CONTENT_LENGTH, HeaderValue::from(content.size)),
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::HeaderName::from_static("cross-origin-resource-policy"), HeaderValue::from_static("cross-origin")),
    ];
    Ok((headers, Body::from_stream(ReaderStream::with_capacity(file, 64 * 1024))).into_response())
}

fn is_inline_type(content_type: &str) -> bool {
    let essence = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
    INLINE_TYPES.contains(&essence.as_str())
}

/// `inline` or `attachment`, with the file name as a quoted string when it is plain printable
/// ASCII, else in RFC 6266's UTF-8 form (`filename*=utf-8''...`, percent-encoded).
pub fn content_disposition(inline: bool, file_name: Option<&str>) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    match file_name {
        None => kind.to_owned(),
        Some(name) if name.bytes().all(|b| (0x20..0x7f).contains(&b) && b != b'"' && b != b'\\') => {
            format!("{kind}; filename=\"{name}\"")
        }
        Some(name) => {
            // RFC 5987 attr-char: these go as they are, every other byte as %XX.
            let attr_char = |b: u8| b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b);
            let encoded: String = name
                .bytes()
                .map(|b| if attr_char(b) { char::from(b).to_string() } else { format!("%{b:02X}") })
                .collect();
            format!("{kind}; filename*=utf-8''{encoded}")
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disposition_follows_type_and_encodes_names() {
        assert!(is_inline_type("image/PNG"));
        assert!(is_inline_type("text/plain; charset=utf-8"));
        assert!(!is_inline_type("text/html"));
        assert!(!is_inline_type("image/svg+xml"));
        assert_eq!(content_disposition(true, None), "inline");
        assert_eq!(content_disposition(false, Some("a b.html")), "attachment; filename=\"a b.html\"");
        assert_eq!(
            content_disposition(true, Some("\u{e9}t\u{e9} \"1\".png")),
            "inline; filename*=utf-8''%C3%A9t%C3%A9%20%221%22.png"
        );
    }
}
