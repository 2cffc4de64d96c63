//! The content repository: uploads streamed into the content-addressed store, metadata in the
//! database, waiting for asynchronous uploads, thumbnails, link previews, and other servers'
//! media fetched over federation.

pub mod admin;
mod flight;
pub mod headers;
pub mod html;
pub mod multipart;
pub mod preview;
pub mod remote;
pub mod store;
pub mod thumbnail;

use std::sync::{Mutex, Weak};
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use futures::Stream;
use rand::Rng;
use ruma::{OwnedServerName, UserId};
use serde::Deserialize;
use tokio::sync::{Semaphore, mpsc, watch};

use crate::Services;
use crate::config::{Config, RateLimitConfig};
use crate::error::{Error, Result};
use crate::http::rate_limit::RateLimiter;
use crate::storage::media::{MediaRow, StoredContent, ThumbnailKey, ThumbnailRow, Upload};
use crate::storage::{self, now_ms};
use flight::InFlight;
use preview::{GuardedClient, Previewer};
use store::{ContentStore, WriteError};
use thumbnail::{Method, Rendered, Target, ThumbnailError};

/// How long a media ID from `POST /_matrix/media/v1/create` waits for its upload (the spec's
/// recommended 24 hours).
pub const PENDING_UPLOAD_LIFETIME_MS: i64 = 24 * 60 * 60 * 1000;
/// How long a download waits for a pending upload when the client does not say.
pub const DEFAULT_WAIT_MS: u64 = 20_000;
/// The longest wait for a pending upload a client may ask for.
const MAX_WAIT_MS: u64 = 60_000;

pub struct MediaService {
    pub store: ContentStore,
    limiter: RateLimiter,
    /// Bumped whenever a pending media ID receives its content, to wake waiting downloads.
    uploaded: watch::Sender<u64>,
    /// Thumbnails decoded at once: decoding is CPU- and memory-heavy.
    thumbnail_slots: Semaphore,
    /// Present when URL previews are enabled.
    pub previewer: Option<Previewer>,
    /// Remote fetches and thumbnail renders in progress.
    in_flight: InFlight,
    /// Uploads whose configured thumbnails are to be made, for `make_thumbnails`.
    uploaded_images: mpsc::UnboundedSender<String>,
    uploaded_images_rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Follows the `Location` of remote media.
    redirects: GuardedClient,
}

impl MediaService {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let limits = RateLimitConfig {
            enabled: config.rate_limits.enabled,
            per_second: config.media.upload_per_second,
            burst: config.media.upload_burst,
        };
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let (uploaded_images, uploaded_images_rx) = mpsc::unbounded_channel();
        Ok(Self {
            store: ContentStore::open(config.data_dir.join("media"))?,
            limiter: RateLimiter::new(limits),
            uploaded: watch::Sender::new(0),
            thumbnail_slots: Semaphore::new(cores),
            previewer: config.media.url_previews.then(|| Previewer::new(&config.media)).transpose()?,
            in_flight: InFlight::default(),
            uploaded_images,
            uploaded_images_rx: Mutex::new(Some(uploaded_images_rx)),
            redirects: GuardedClient::new(&config.media, "remote media", remote::TRANSFER_TIMEOUT)?,
        })
    }
}

/// The `mxc://` URI of a local media ID.
pub fn mxc(server_name: &str, media_id: &str) -> String {
    format!("mxc://{server_name}/{media_id}")
}

/// Media IDs are 24 random letters and digits (the spec allows `A-Za-z0-9_-`).
fn new_media_id() -> String {
    rand::thread_rng().sample_iter(rand::distributions::Alphanumeric).take(24).map(char::from).collect()
}

/// Whether a string can be a media ID (the spec's character set).
pub fn is_valid_media_id(media_id: &str) -> bool {
    !media_id.is_empty()
        && media_id.len() <= 255
        && media_id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

fn internal(e: impl Into<anyhow::Error>) -> Error {
    Error::Internal(e.into())
}

/// What the request says about an upload besides its bytes.
pub struct UploadInfo {
    pub content_type: String,
    pub file_name: Option<String>,
    /// The announced length, checked before reading anything.
    pub content_length: Option<u64>,
}

/// Receives the bytes of an upload into the store, enforcing the rate limit, the size limit
/// (413 `M_TOO_LARGE`) and the user's quota (403 `M_FORBIDDEN`).
async fn receive<E: std::fmt::Display>(
    state: &Services,
    user: &UserId,
    info: &UploadInfo,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<StoredContent> {
    check_rate(state, "media_upload", user)?;
    let max = state.config.media.max_upload_bytes;
    let quota_left = match state.config.media.user_quota_bytes {
        Some(quota) => quota.saturating_sub(storage::media::bytes_uploaded_by(&state.db, user.as_str()).await?),
        None => u64::MAX,
    };
    let too_large = || Error::too_large(format!("Uploads are limited to {max} bytes"));
    let over_quota = || Error::forbidden("Upload quota exceeded");
    match info.content_length {
        Some(len) if len > max => return Err(too_large()),
        Some(len) if len > quota_left => return Err(over_quota()),
        _ => {}
    }
    match state.media.store.write_stream(body, max.min(quota_left)).await {
        Ok(content) => Ok(content),
        Err(WriteError::TooLarge(limit)) if limit < max => Err(over_quota()),
        Err(WriteError::TooLarge(_)) => Err(too_large()),
        Err(WriteError::Source(e)) => {
            Err(Error::matrix(StatusCode::BAD_REQUEST, "M_UNKNOWN", format!("Upload failed: {e}")))
        }
        Err(e @ WriteError::Io(_)) => Err(internal(e)),
    }
}

/// `POST /_matrix/media/v3/upload`: stores the content under a new media ID.
pub async fn upload<E: std::fmt::Display>(
    state: &Services,
    user: &UserId,
    info: UploadInfo,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<String> {
    let content = receive(state, user, &info, body).await?;
    record_upload(state, user, &content, &info.content_type, info.file_name.as_deref()).await
}

/// Records stored content as a new local media ID of `user`.
async fn record_upload(
    state: &Services,
    user: &UserId,
    content: &StoredContent,
    content_type: &str,
    file_name: Option<&str>,
) -> Result<String> {
    let media_id = new_media_id();
    let upload = Upload { content, content_type, file_name };
    let image = is_image_type(content_type);
    let mut tx = state.db.begin().await?;
    storage::media::insert_uploaded(&mut tx, &media_id, user.as_str(), &upload, image, now_ms()).await?;
    tx.commit().await?;
    if image {
        let _ = state.media.uploaded_images.send(media_id.clone());
    }
    Ok(media_id)
}

/// Uploads whose configured thumbnails are made at once (others only when asked).
fn is_image_type(content_type: &str) -> bool {
    content_type.trim_start().get(..6).is_some_and(|t| t.eq_ignore_ascii_case("image/"))
}

/// The per-user rate limit, which the users of appservices with `rate_limited: false` skip.
fn check_rate(state: &Services, action: &'static str, user: &UserId) -> Result<()> {
    if state.appservices.unlimited(user) {
        return Ok(());
    }
    state.media.limiter.check_user(action, user.as_str())
}

/// `POST /_matrix/media/v1/create`: a media ID whose content comes later; returns it with
/// its expiry.
pub async fn create(state: &Services, user: &UserId) -> Result<(String, i64)> {
    check_rate(state, "media_create", user)?;
    let now = now_ms();
    let pending = storage::media::count_pending(&state.db, user.as_str(), now).await?;
    if pending >= i64::from(state.config.media.max_pending_uploads) {
        return Err(Error::matrix(
            StatusCode::TOO_MANY_REQUESTS,
            "M_LIMIT_EXCEEDED",
            "Too many pending uploads: upload to them or wait until they expire",
        ));
    }
    let media_id = new_media_id();
    let expires = now + PENDING_UPLOAD_LIFETIME_MS;
    let mut tx = state.db.begin().await?;
    storage::media::insert_pending(&mut tx, &media_id, user.as_str(), now, expires).await?;
    tx.commit().await?;
    Ok((media_id, expires))
}

fn cannot_overwrite() -> Error {
    Error::matrix(StatusCode::CONFLICT, "M_CANNOT_OVERWRITE_MEDIA", "Media already uploaded")
}

/// `PUT /_matrix/media/v3/upload/{serverName}/{mediaId}`: the content of a created media ID.
pub async fn upload_pending<E: std::fmt::Display>(
    state: &Services,
    user: &UserId,
    media_id: &str,
    info: UploadInfo,
    body: impl Stream<Item = Result<Bytes, E>>,
) -> Result<()> {
    let row = storage::media::get(&state.db, media_id).await?.ok_or_else(|| Error::not_found("Unknown media ID"))?;
    if row.uploader != user.as_str() {
        return Err(Error::forbidden("This media ID was created by another user"));
    }
    if row.content.is_some() {
        return Err(cannot_overwrite());
    }
    if row.unused_expires_ts.is_some_and(|t| t <= now_ms()) {
        return Err(Error::not_found("This media ID has expired"));
    }
    let content = receive(state, user, &info, body).await?;
    let upload = Upload { content: &content, content_type: &info.content_type, file_name: info.file_name.as_deref() };
    let image = is_image_type(&info.content_type);
    let mut tx = state.db.begin().await?;
    if !storage::media::complete_pending(&mut tx, media_id, &upload, image, now_ms()).await? {
        // Another upload to the same ID finished first.
        return Err(cannot_overwrite());
    }
    tx.commit().await?;
    state.media.uploaded.send_modify(|n| *n += 1);
    if image {
        let _ = state.media.uploaded_images.send(media_id.to_owned());
    }
    Ok(())
}

/// Which door a download comes through: the deprecated unauthenticated endpoints only see
/// media older than the configured cut-over (the spec's "freeze").
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Authenticated,
    Legacy,
}

/// A local media and its content, waiting up to `wait_ms` (capped) for a pending upload
/// (then 504 `M_NOT_YET_UPLOADED`).
pub async fn local_content(
    state: &Services,
    media_id: &str,
    access: Access,
    wait_ms: u64,
) -> Result<(MediaRow, StoredContent)> {
    let mut uploads = state.media.uploaded.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait_ms.min(MAX_WAIT_MS));
    let cutover = state.config.media.legacy_cutover_ts;
    loop {
        let row = storage::media::get(&state.db, media_id)
            .await?
            .filter(|row| !row.quarantined)
            .filter(|row| access == Access::Authenticated || cutover.is_some_and(|c| row.created_ts < c))
            .filter(|row| row.content.is_some() || row.unused_expires_ts.is_none_or(|t| t > now_ms()))
            .ok_or_else(|| Error::not_found("Media not found"))?;
        if let Some(content) = row.content.clone() {
            return Ok((row, content));
        }
        if !matches!(tokio::time::timeout_at(deadline, uploads.changed()).await, Ok(Ok(()))) {
            return Err(Error::matrix(
                StatusCode::GATEWAY_TIMEOUT,
                "M_NOT_YET_UPLOADED",
                "Content has not yet been uploaded",
            ));
        }
    }
}

/// The database key of a thumbnail (of remote media when `remote_server` is set).
fn thumbnail_key<'a>(
    remote_server: Option<&'a str>,
    media_id: &'a str,
    target: Target,
    animated: bool,
) -> ThumbnailKey<'a> {
    ThumbnailKey {
        remote_server,
        media_id,
        width: target.width,
        height: target.height,
        method: target.method.as_str(),
        animated,
    }
}

/// The thumbnail of a media's content (local, or remote when `remote_server` is set) at a
/// configured size: from the cache, else rendered (in the blocking pool, once however many
/// ask at the same time) and kept on disk and in the database.
async fn thumbnail(
    state: &Services,
    remote_server: Option<&str>,
    media_id: &str,
    content: &StoredContent,
    target: Target,
    animated: bool,
) -> Result<ThumbnailRow> {
    let key = thumbnail_key(remote_server, media_id, target, animated);
    if let Some(cached) = storage::media::get_thumbnail(&state.db, &key).await? {
        return Ok(cached);
    }
    let render_key = format!(
        "render {}/{media_id}/{}x{}/{}/{animated}",
        remote_server.unwrap_or(""),
        target.width,
        target.height,
        key.method
    );
    let _rendering = state.media.in_flight.hold(render_key).await;
    // Whoever rendered it meanwhile cached it.
    if let Some(cached) = storage::media::get_thumbnail(&state.db, &key).await? {
        return Ok(cached);
    }
    let _slot = state.media.thumbnail_slots.acquire().await.map_err(internal)?;
    // Only the cache of remote media tracks access per thumbnail.
    let last_access_ts = remote_server.map(|_| now_ms());
    let path = state.media.store.path(content);
    let size = content.size;
    let rendered = tokio::task::spawn_blocking(move || thumbnail::render(&path, size, target, animated))
        .await
        .map_err(internal)?;
    let row = match rendered {
        Ok(Rendered::Original { content_type }) => {
            ThumbnailRow { content: content.clone(), content_type: content_type.to_owned(), last_access_ts }
        }
        Ok(Rendered::Image { bytes, content_type }) => ThumbnailRow {
            content: state.media.store.write_bytes(bytes).await.map_err(internal)?,
            content_type: content_type.to_owned(),
            last_access_ts,
        },
        Err(ThumbnailError::NotAnImage) => {
            return Err(Error::matrix(
                StatusCode::BAD_REQUEST,
                "M_UNKNOWN",
                "Cannot generate thumbnails for the requested content",
            ));
        }
        Err(ThumbnailError::TooLarge) => return Err(Error::too_large("Content is too large to thumbnail")),
        Err(e) => return Err(internal(e)),
    };
    let mut tx = state.db.begin().await?;
    storage::media::insert_thumbnail(&mut tx, &key, &row).await?;
    tx.commit().await?;
    Ok(row)
}

/// Media ready to be sent: its stored bytes, type and `Content-Disposition`.
pub struct Served {
    pub content: StoredContent,
    pub content_type: String,
    pub disposition: String,
}

/// How precisely the last access to media is kept: a write per download would cost more
/// than deletion by age needs.
const ACCESS_RESOLUTION_MS: i64 = 60 * 60 * 1000;

/// What was served, for `note_access`.
enum Accessed<'a> {
    Local(&'a str),
    /// Another server's media: its origin and media ID.
    Remote(&'a str, &'a str),
    RemoteThumbnail(&'a ThumbnailKey<'a>),
}

/// Records that media was served, when the recorded last access is older than
/// `ACCESS_RESOLUTION_MS`.
async fn note_access(state: &Services, what: Accessed<'_>, last_access_ts: Option<i64>) -> Result<()> {
    let now = now_ms();
    if last_access_ts.is_some_and(|t| t > now - ACCESS_RESOLUTION_MS) {
        return Ok(());
    }
    let mut tx = state.db.begin().await?;
    match what {
        Accessed::Local(media_id) => storage::media::touch(&mut tx, media_id, now).await?,
        Accessed::Remote(server, media_id) => storage::media::touch_remote(&mut tx, server, media_id, now).await?,
        Accessed::RemoteThumbnail(key) => storage::media::touch_remote_thumbnail(&mut tx, key, now).await?,
    }
    tx.commit().await?;
    Ok(())
}

/// Whose media `mxc://server_name/media_id` is: ours (`None`) or another server's. Invalid
/// IDs, and remote media through the frozen legacy endpoints, read as not found.
fn origin(state: &Services, server_name: &str, media_id: &str, access: Access) -> Result<Option<OwnedServerName>> {
    let not_found = || Error::not_found("Media not found");
    if !is_valid_media_id(media_id) {
        return Err(not_found());
    }
    if server_name == state.config.server_name {
        return Ok(None);
    }
    if access == Access::Legacy {
        return Err(not_found());
    }
    OwnedServerName::try_from(server_name).map(Some).map_err(|_| not_found())
}

/// The content of `mxc://server_name/media_id`: local media (waiting up to `wait_ms` for a
/// pending upload), or remote media from the cache or its server. `file_name` (from the
/// download path) replaces the stored one.
pub async fn download(
    state: &Services,
    server_name: &str,
    media_id: &str,
    file_name: Option<&str>,
    access: Access,
    wait_ms: u64,
) -> Result<Served> {
    let (content, content_type, stored_name) = match origin(state, server_name, media_id, access)? {
        None => {
            let (row, content) = local_content(state, media_id, access, wait_ms).await?;
            note_access(state, Accessed::Local(media_id), row.last_access_ts).await?;
            (content, row.content_type.unwrap_or_else(|| "application/octet-stream".to_owned()), row.file_name)
        }
        Some(server) => {
            let row = remote::content(state, &server, media_id, wait_ms).await?;
            note_access(state, Accessed::Remote(server.as_str(), media_id), row.last_access_ts).await?;
            (row.content, row.content_type, row.file_name)
        }
    };
    let disposition =
        headers::content_disposition(headers::is_inline_type(&content_type), file_name.or(stored_name.as_deref()));
    Ok(Served { content, content_type, disposition })
}

/// The query of a thumbnail request.
#[derive(Deserialize)]
pub struct ThumbnailQuery {
    width: Option<u32>,
    height: Option<u32>,
    method: Option<String>,
    animated: Option<bool>,
    timeout_ms: Option<u64>,
}

/// A thumbnail of `mxc://server_name/media_id` as a request asks for it.
pub async fn thumbnail_for(
    state: &Services,
    server_name: &str,
    media_id: &str,
    query: &ThumbnailQuery,
    access: Access,
) -> Result<Served> {
    let width = query.width.ok_or_else(|| Error::missing_param("Missing width"))?;
    let height = query.height.ok_or_else(|| Error::missing_param("Missing height"))?;
    if width == 0 || height == 0 {
        return Err(Error::invalid_param("width and height must be positive"));
    }
    let method = match query.method.as_deref() {
        None => Method::Scale,
        Some(m) => Method::parse(m).ok_or_else(|| Error::invalid_param("method must be crop or scale"))?,
    };
    let target = thumbnail::snap(&state.config.media.thumbnail_sizes, width, height, method);
    let animated = query.animated.unwrap_or(false);
    let wait_ms = query.timeout_ms.unwrap_or(DEFAULT_WAIT_MS);
    let thumb = match origin(state, server_name, media_id, access)? {
        None => {
            let (row, content) = local_content(state, media_id, access, wait_ms).await?;
            note_access(state, Accessed::Local(media_id), row.last_access_ts).await?;
            thumbnail(state, None, media_id, &content, target, animated).await?
        }
        Some(server) => {
            let thumb = remote::thumbnail(state, &server, media_id, target, animated, wait_ms).await?;
            let key = thumbnail_key(Some(server.as_str()), media_id, target, animated);
            note_access(state, Accessed::RemoteThumbnail(&key), thumb.last_access_ts).await?;
            thumb
        }
    };
    let extension = thumb.content_type.strip_prefix("image/").map_or("bin", |t| if t == "jpeg" { "jpg" } else { t });
    // Remote thumbnails carry the type their origin gave: only safe types go inline.
    let inline = headers::is_inline_type(&thumb.content_type);
    let disposition = headers::content_disposition(inline, Some(&format!("thumbnail.{extension}")));
    Ok(Served { content: thumb.content, content_type: thumb.content_type, disposition })
}

/// Opens the file of stored content.
pub async fn open(state: &Services, content: &StoredContent) -> Result<tokio::fs::File> {
    tokio::fs::File::open(state.media.store.path(content))
        .await
        .map_err(|e| Error::Internal(anyhow::Error::new(e).context(format!("media file {} missing", content.sha256))))
}

/// Makes the configured thumbnails of uploaded images, as they are announced, until the
/// server is dropped. Every process runs it for its own uploads.
pub async fn make_thumbnails(services: Weak<Services>) {
    let receiver = services.upgrade().and_then(|svc| svc.media.uploaded_images_rx.lock().ok()?.take());
    let Some(mut uploads) = receiver else { return };
    // Ends when the server (holding the sender) is dropped.
    while let Some(media_id) = uploads.recv().await {
        let Some(svc) = services.upgrade() else { return };
        tokio::spawn(async move {
            if let Err(e) = pregenerate_thumbnails(&svc, &media_id).await {
                tracing::warn!(media_id, error = %e, "making thumbnails failed; the housekeeping retries");
            }
        });
    }
}

/// Makes the configured thumbnails of a local upload that are not made yet, then marks it
/// done. Content that cannot be thumbnailed is done too; other failures leave it pending.
pub async fn pregenerate_thumbnails(state: &Services, media_id: &str) -> Result<()> {
    let Some(row) = storage::media::get(&state.db, media_id).await? else { return Ok(()) };
    if let Some(content) = &row.content {
        for target in &state.config.media.thumbnail_sizes {
            match thumbnail(state, None, media_id, content, *target, false).await {
                Ok(_) => {}
                Err(e @ Error::Internal(_)) => return Err(e),
                // Not an image, or too large to decode: nothing to make.
                Err(_) => break,
            }
        }
    }
    let mut tx = state.db.begin().await?;
    storage::media::clear_thumbnails_pending(&mut tx, media_id).await?;
    tx.commit().await?;
    Ok(())
}

/// How often the media housekeeping runs.
const HOUSEKEEPING_PERIOD: Duration = Duration::from_secs(60);

/// The periodic media housekeeping (`housekeep`), every minute until the server is dropped.
/// Its work is shared by all processes of a deployment: with several, only one (the
/// leader) should run it. Started in `AppState::build`.
pub async fn housekeeping(services: Weak<Services>) {
    let mut ticks = tokio::time::interval(HOUSEKEEPING_PERIOD);
    loop {
        ticks.tick().await;
        let Some(svc) = services.upgrade() else { return };
        // One process of a deployment is enough (the leader's).
        if !svc.cluster.leads() {
            continue;
        }
        if let Err(e) = housekeep(&svc).await {
            tracing::warn!(error = %e, "media housekeeping failed");
        }
    }
}

/// Makes the thumbnails of uploads whose generation was cut short (a crash, or a process
/// that stopped), forgets media IDs created but never uploaded to before they expired, and
/// expired link previews.
pub async fn housekeep(state: &Services) -> Result<()> {
    // Younger uploads are still being handled by the process that took them.
    let cut_short_before = now_ms() - HOUSEKEEPING_PERIOD.as_millis() as i64;
    for media_id in storage::media::thumbnails_pending(&state.db, cut_short_before, 100).await? {
        if let Err(e) = pregenerate_thumbnails(state, &media_id).await {
            tracing::warn!(media_id, error = %e, "making thumbnails failed again");
        }
    }
    let mut tx = state.db.begin().await?;
    let now = now_ms();
    storage::media::delete_expired_pending(&mut tx, now).await?;
    storage::media::delete_expired_previews(&mut tx, now).await?;
    tx.commit().await?;
    Ok(())
}
