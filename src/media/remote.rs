//! Media of other servers: fetched over federation (`/_matrix/federation/v1/media/...`,
//! multipart answers, or a `Location` to fetch from), stored in the content store and cached
//! with a row per media and per thumbnail. One fetch at a time per media (or thumbnail):
//! concurrent requests wait for it and are served from the cache.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use bytes::Bytes;
use futures::Stream;
use ruma::ServerName;

use super::headers::file_name_of;
use super::multipart::MultipartReader;
use super::preview::body_stream;
use super::store::WriteError;
use super::thumbnail::Target;
use super::{MAX_WAIT_MS, internal};
use crate::Services;
use crate::error::{Error, Result};
use crate::federation::client::{self, FederationError};
use crate::storage::media::{RemoteMediaRow, StoredContent, ThumbnailRow, Upload};
use crate::storage::{self, now_ms};

/// Time allowed for the bytes to arrive once the answer has started.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(120);
/// Largest metadata part read (it is an empty object today).
const MAX_METADATA_BYTES: usize = 64 * 1024;
const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

fn not_yet_uploaded() -> Error {
    Error::matrix(
        StatusCode::GATEWAY_TIMEOUT,
        "M_NOT_YET_UPLOADED",
        "The remote server did not send the content in time",
    )
}

fn failed(detail: impl std::fmt::Display) -> Error {
    Error::matrix(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("Failed to fetch remote media: {detail}"))
}

/// What a client is told when the origin did not give the media.
fn fetch_error(e: FederationError) -> Error {
    match &e {
        FederationError::Remote { status, .. } if *status == StatusCode::NOT_FOUND => {
            Error::not_found("Remote media not found")
        }
        FederationError::Remote { errcode, .. } if errcode == "M_NOT_YET_UPLOADED" => not_yet_uploaded(),
        FederationError::Remote { errcode, .. } if errcode == "M_TOO_LARGE" => {
            Error::matrix(StatusCode::BAD_GATEWAY, "M_TOO_LARGE", "The remote server cannot serve this content")
        }
        FederationError::Remote { status, .. } if *status == StatusCode::BAD_REQUEST => {
            // E.g. the origin cannot thumbnail this content.
            Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", "The remote server refused the request")
        }
        _ => failed(e),
    }
}

/// Content received from the origin.
struct Fetched {
    content: StoredContent,
    content_type: String,
    file_name: Option<String>,
}

/// Stores a body, refusing more than the upload limit (502 `M_TOO_LARGE`, as the spec says
/// for content too large to serve).
async fn store<E: std::fmt::Display>(
    svc: &Services,
    body: impl Stream<Item = std::result::Result<Bytes, E>>,
) -> Result<StoredContent> {
    let max = svc.config.media.max_upload_bytes;
    match svc.media.store.write_stream(body, max).await {
        Ok(content) => Ok(content),
        Err(WriteError::TooLarge(_)) => Err(Error::matrix(
            StatusCode::BAD_GATEWAY,
            "M_TOO_LARGE",
            format!("Remote media is larger than {max} bytes"),
        )),
        Err(WriteError::Source(e)) => Err(failed(e)),
        Err(e @ WriteError::Io(_)) => Err(internal(e)),
    }
}

fn header(headers: &reqwest::header::HeaderMap, name: reqwest::header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// GETs a federation media path and stores the media it answers (following a `Location`).
/// The answer must start within `wait`.
async fn fetch(svc: &Services, server: &ServerName, path: &str, wait: Duration) -> Result<Fetched> {
    let send = client::send(svc, server, Method::GET, path, None, wait + TRANSFER_TIMEOUT);
    let response = match tokio::time::timeout(wait, send).await {
        Ok(response) => response.map_err(fetch_error)?,
        Err(_) => return Err(not_yet_uploaded()),
    };
    let content_type = header(response.headers(), reqwest::header::CONTENT_TYPE).unwrap_or_default().to_owned();
    let mut reader = MultipartReader::new(&content_type, Box::pin(body_stream(response))).map_err(failed)?;
    let missing = || failed("the answer lacks a part");
    reader.next_part().await.map_err(failed)?.ok_or_else(missing)?;
    let metadata = reader.read_to_end(MAX_METADATA_BYTES).await.map_err(failed)?;
    if !serde_json::from_slice::<serde_json::Value>(&metadata).is_ok_and(|m| m.is_object()) {
        return Err(failed("the metadata part is not a JSON object"));
    }
    let part = reader.next_part().await.map_err(failed)?.ok_or_else(missing)?;
    if let Some(location) = part.get("location") {
        return follow(svc, location).await;
    }
    let content = store(svc, reader.body()).await?;
    Ok(Fetched {
        content,
        content_type: part.get("content-type").unwrap_or(DEFAULT_CONTENT_TYPE).to_owned(),
        file_name: part.get("content-disposition").and_then(file_name_of),
    })
}

/// Fetches media from where the origin redirected us: HTTPS only, with the same address
/// checks as link previews (the URL is chosen by another server).
async fn follow(svc: &Services, location: &str) -> Result<Fetched> {
    let url = url::Url::parse(location).map_err(|e| failed(format!("invalid Location: {e}")))?;
    let (_, response) = svc.media.redirects.fetch(url, "*/*", &["https"]).await.map_err(failed)?;
    let content_type = header(response.headers(), reqwest::header::CONTENT_TYPE).unwrap_or(DEFAULT_CONTENT_TYPE);
    let content_type = content_type.to_owned();
    let file_name = header(response.headers(), reqwest::header::CONTENT_DISPOSITION).and_then(file_name_of);
    let content = store(svc, body_stream(response)).await?;
    Ok(Fetched { content, content_type, file_name })
}

/// How long the origin may take to start answering: the client's `timeout_ms`, capped.
fn capped(wait_ms: u64) -> (u64, Duration) {
    let wait_ms = wait_ms.min(MAX_WAIT_MS);
    (wait_ms, Duration::from_millis(wait_ms))
}

/// `mxc://server/media_id`, from the cache or fetched from its server.
pub async fn content(svc: &Services, server: &ServerName, media_id: &str, wait_ms: u64) -> Result<RemoteMediaRow> {
    let cached = || storage::media::get_remote(&svc.db, server.as_str(), media_id);
    if let Some(row) = cached().await? {
        return Ok(row);
    }
    let _fetching = svc.media.in_flight.hold(format!("fetch {server}/{media_id}")).await;
    // Whoever held it before may have fetched it.
    if let Some(row) = cached().await? {
        return Ok(row);
    }
    let (wait_ms, wait) = capped(wait_ms);
    let path = format!("/_matrix/federation/v1/media/download/{}?timeout_ms={wait_ms}", client::encode(media_id));
    let fetched = fetch(svc, server, &path, wait).await?;
    let upload = Upload {
        content: &fetched.content,
        content_type: &fetched.content_type,
        file_name: fetched.file_name.as_deref(),
    };
    let now = now_ms();
    let mut tx = svc.db.begin().await?;
    storage::media::insert_remote(&mut tx, server.as_str(), media_id, &upload, now).await?;
    tx.commit().await?;
    Ok(RemoteMediaRow {
        content: fetched.content,
        content_type: fetched.content_type,
        file_name: fetched.file_name,
        last_access_ts: Some(now),
    })
}

/// A thumbnail of remote media: cached, else asked of its server, else made here from the
/// (cached or fetched) original.
pub async fn thumbnail(
    svc: &Services,
    server: &ServerName,
    media_id: &str,
    target: Target,
    animated: bool,
    wait_ms: u64,
) -> Result<ThumbnailRow> {
    let key = super::thumbnail_key(Some(server.as_str()), media_id, target, animated);
    if let Some(row) = storage::media::get_thumbnail(&svc.db, &key).await? {
        return Ok(row);
    }
    let asked = {
        let fetch_key = format!(
            "fetch {server}/{media_id}/{}x{}/{}/{animated}",
            target.width,
            target.height,
            target.method.as_str()
        );
        let _fetching = svc.media.in_flight.hold(fetch_key).await;
        if let Some(row) = storage::media::get_thumbnail(&svc.db, &key).await? {
            return Ok(row);
        }
        let (wait_ms, wait) = capped(wait_ms);
        let path = format!(
            "/_matrix/federation/v1/media/thumbnail/{}?width={}&height={}&method={}&animated={animated}&timeout_ms={wait_ms}",
            client::encode(media_id),
            target.width,
            target.height,
            target.method.as_str(),
        );
        fetch(svc, server, &path, wait).await
    };
    match asked {
        Ok(fetched) => {
            let row = ThumbnailRow {
                content: fetched.content,
                content_type: fetched.content_type,
                last_access_ts: Some(now_ms()),
            };
            let mut tx = svc.db.begin().await?;
            storage::media::insert_thumbnail(&mut tx, &key, &row).await?;
            tx.commit().await?;
            Ok(row)
        }
        // Media the origin does not have (or does not answer for) has no original either.
        Err(e) if matches!(e.errcode(), "M_NOT_FOUND" | "M_NOT_YET_UPLOADED") => Err(e),
        Err(e) => {
            tracing::debug!(%server, media_id, error = %e, "no thumbnail from the origin; making one here");
            let original = content(svc, server, media_id, wait_ms).await?;
            super::thumbnail(svc, Some(server.as_str()), media_id, &original.content, target, animated).await
        }
    }
}
