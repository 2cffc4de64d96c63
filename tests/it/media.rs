//! Content repository: uploads, downloads and their headers, deduplication, asynchronous
//! uploads, limits, the legacy freeze, thumbnails and link previews.

use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use plexus::media::thumbnail::{COMMON_SIZES, Method as ThumbnailMethod, Target};
use plexus::storage::media::{self, ThumbnailKey};

use crate::harness::{TestServer, TestUser, enc, wait_for};

const V1: &str = "/_matrix/client/v1/media";

/// An answer with its raw body.
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or(Value::Null)
    }

    #[track_caller]
    fn assert_error(&self, status: u16, errcode: &str) {
        assert_eq!(
            (self.status.as_u16(), self.json()["errcode"].as_str()),
            (status, Some(errcode)),
            "{:?}",
            self.json()
        );
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

async fn raw(
    user: Option<&TestUser>,
    server: &TestServer,
    method: Method,
    path: &str,
    body: Option<(&str, Vec<u8>)>,
) -> Raw {
    let mut req = server.client.request(method, format!("{}{path}", server.base));
    if let Some(u) = user {
        req = req.bearer_auth(&u.token);
    }
    if let Some((content_type, bytes)) = body {
        req = req.header("Content-Type", content_type).body(bytes);
    }
    let resp = req.send().await.expect("request sent");
    Raw { status: resp.status(), headers: resp.headers().clone(), bytes: resp.bytes().await.expect("body").to_vec() }
}

/// Uploads and answers `(server_name, media_id)`.
async fn upload(
    server: &TestServer,
    user: &TestUser,
    bytes: Vec<u8>,
    content_type: &str,
    name: Option<&str>,
) -> (String, String) {
    let path = match name {
        Some(n) => format!("/_matrix/media/v3/upload?filename={n}"),
        None => "/_matrix/media/v3/upload".to_owned(),
    };
    let r = raw(Some(user), server, Method::POST, &path, Some((content_type, bytes))).await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.json());
    let uri = r.json()["content_uri"].as_str().expect("content_uri").to_owned();
    let (server_name, media_id) = uri.strip_prefix("mxc://").expect("mxc URI").split_once('/').expect("media ID");
    assert_eq!(server_name, server.server_name);
    (server_name.to_owned(), media_id.to_owned())
}

async fn download(server: &TestServer, user: Option<&TestUser>, server_name: &str, media_id: &str) -> Raw {
    raw(user, server, Method::GET, &format!("{V1}/download/{server_name}/{media_id}"), None).await
}

#[tokio::test]
async fn upload_download_round_trip_with_headers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    let config = raw(Some(&alice), &server, Method::GET, &format!("{V1}/config"), None).await;
    assert_eq!(config.json()["m.upload.size"], json!(50 * 1024 * 1024));
    raw(None, &server, Method::GET, &format!("{V1}/config"), None).await.assert_error(401, "M_MISSING_TOKEN");

    let (s, id) = upload(&server, &alice, b"x".to_vec(), "text/plain", Some("hello.txt")).await;
    let r = download(&server, Some(&bob), &s, &id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.bytes, b"x");
    assert_eq!(r.header("content-type"), "text/plain");
    assert_eq!(r.header("content-disposition"), "inline; filename=\"hello.txt\"");
    assert_eq!(
        r.header("content-security-policy"),
        "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; style-src 'unsafe-inline'; object-src 'self';"
    );
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(r.header("cross-origin-resource-policy"), "cross-origin");
    let r = raw(Some(&alice), &server, Method::GET, &format!("{V1}/download/{s}/{id}/other%20name.txt"), None).await;
    assert_eq!(r.header("content-disposition"), "inline; filename=\"other name.txt\"");

    // 10 MB of varied bytes, no file name: an attachment without a name.
    let big: Vec<u8> = (0..10_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let (s, big_id) = upload(&server, &alice, big.clone(), "application/octet-stream", None).await;
    let r = download(&server, Some(&alice), &s, &big_id).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("content-length"), "10000000");
    assert_eq!(r.header("content-disposition"), "attachment");
    assert!(r.bytes == big, "10 MB download differs");

    // HTML is never inline, whatever its name.
    let (s, html_id) =
        upload(&server, &alice, b"<script>alert(1)</script>".to_vec(), "text/html", Some("page.html")).await;
    let r = download(&server, Some(&alice), &s, &html_id).await;
    assert_eq!(r.header("content-type"), "text/html");
    assert_eq!(r.header("content-disposition"), "attachment; filename=\"page.html\"");

    download(&server, None, &s, &id).await.assert_error(401, "M_MISSING_TOKEN");
    download(&server, Some(&alice), &s, "NoSuchMedia").await.assert_error(404, "M_NOT_FOUND");
    // Another server's media is fetched (see fed_lookups): one that cannot be found is a bad
    // gateway, and an invalid server name names no media.
    download(&server, Some(&alice), "elsewhere.invalid", &id).await.assert_error(502, "M_UNKNOWN");
    download(&server, Some(&alice), "bad%20name", &id).await.assert_error(404, "M_NOT_FOUND");
    // Without a cut-over, the deprecated unauthenticated endpoints serve nothing.
    let legacy = raw(None, &server, Method::GET, &format!("/_matrix/media/v3/download/{s}/{id}"), None).await;
    legacy.assert_error(404, "M_NOT_FOUND");
    let r = raw(None, &server, Method::POST, "/_matrix/media/v3/upload", Some(("text/plain", b"x".to_vec()))).await;
    r.assert_error(401, "M_MISSING_TOKEN");
}

/// Content files under the store (not its temp folder).
fn stored_files(dir: &Path) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() && path.file_name() != Some("tmp".as_ref()) {
            count += stored_files(&path);
        } else if path.is_file() {
            count += 1;
        }
    }
    count
}

#[tokio::test]
async fn identical_uploads_are_stored_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let media_dir = server.config.data_dir.join("media");
    let (s, first) = upload(&server, &alice, b"same bytes".to_vec(), "text/plain", Some("a.txt")).await;
    let (_, second) = upload(&server, &bob, b"same bytes".to_vec(), "application/octet-stream", Some("b.bin")).await;
    assert_ne!(first, second);
    assert_eq!(stored_files(&media_dir), 1);
    // Each media ID keeps its own metadata.
    let r = download(&server, Some(&alice), &s, &second).await;
    assert_eq!((r.bytes.as_slice(), r.header("content-type")), (&b"same bytes"[..], "application/octet-stream"));
    assert_eq!(r.header("content-disposition"), "attachment; filename=\"b.bin\"");
    upload(&server, &alice, b"other bytes".to_vec(), "text/plain", None).await;
    assert_eq!(stored_files(&media_dir), 2);
}

#[tokio::test]
async fn create_then_upload() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let created = raw(Some(&alice), &server, Method::POST, "/_matrix/media/v1/create", None).await;
    assert_eq!(created.status, StatusCode::OK);
    let body = created.json();
    assert!(body["unused_expires_at"].as_i64().unwrap() > 0);
    let uri = body["content_uri"].as_str().unwrap();
    let (s, id) = uri.strip_prefix("mxc://").unwrap().split_once('/').unwrap();
    let (s, id) = (s.to_owned(), id.to_owned());

    let r = raw(Some(&alice), &server, Method::GET, &format!("{V1}/download/{s}/{id}?timeout_ms=100"), None).await;
    r.assert_error(504, "M_NOT_YET_UPLOADED");

    // A download waiting for the upload gets the content as soon as it arrives.
    let waiting = {
        let (client, url, token) = (
            server.client.clone(),
            format!("{}{V1}/download/{s}/{id}?timeout_ms=15000", server.base),
            alice.token.clone(),
        );
        tokio::spawn(async move { client.get(url).bearer_auth(token).send().await.unwrap() })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let put = format!("/_matrix/media/v3/upload/{s}/{id}?filename=late.bin");
    raw(Some(&bob), &server, Method::PUT, &put, Some(("text/plain", b"no".to_vec())))
        .await
        .assert_error(403, "M_FORBIDDEN");
    let r = raw(Some(&alice), &server, Method::PUT, &put, Some(("text/plain", b"async bytes".to_vec()))).await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({})));
    let resp = waiting.await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-disposition"], "inline; filename=\"late.bin\"");
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"async bytes");

    let r = raw(Some(&alice), &server, Method::PUT, &put, Some(("text/plain", b"again".to_vec()))).await;
    r.assert_error(409, "M_CANNOT_OVERWRITE_MEDIA");
    let unknown = format!("/_matrix/media/v3/upload/{s}/NotCreated");
    raw(Some(&alice), &server, Method::PUT, &unknown, Some(("text/plain", b"x".to_vec())))
        .await
        .assert_error(404, "M_NOT_FOUND");

    // At most max_pending_uploads (5) IDs wait for content at once.
    for _ in 0..5 {
        assert_eq!(
            raw(Some(&bob), &server, Method::POST, "/_matrix/media/v1/create", None).await.status,
            StatusCode::OK
        );
    }
    raw(Some(&bob), &server, Method::POST, "/_matrix/media/v1/create", None)
        .await
        .assert_error(429, "M_LIMIT_EXCEEDED");
}

/// Sends an upload with a chunked body (no Content-Length), so that the limit is met while
/// streaming; answers the status line and the body.
async fn chunked_upload(server: &TestServer, user: &TestUser, chunks: &[&[u8]]) -> (String, String) {
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /_matrix/media/v3/upload HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        server.server_name, user.token
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    for chunk in chunks {
        // The server may answer and close before reading everything: later writes may fail.
        let _ = conn.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await;
        let _ = conn.write_all(chunk).await;
        let _ = conn.write_all(b"\r\n").await;
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = conn.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer).into_owned();
    let status = answer.lines().next().unwrap_or("").to_owned();
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

#[tokio::test]
async fn size_limit_and_quota() {
    let server = TestServer::start_with(|c| {
        c.media.max_upload_bytes = 1000;
        c.media.user_quota_bytes = Some(1500);
    })
    .await;
    let alice = server.register("alice").await;
    let config = raw(Some(&alice), &server, Method::GET, "/_matrix/media/v3/config", None).await;
    assert_eq!(config.json(), json!({ "m.upload.size": 1000 }));
    let r =
        raw(Some(&alice), &server, Method::POST, "/_matrix/media/v3/upload", Some(("text/plain", vec![b'a'; 1001])))
            .await;
    r.assert_error(413, "M_TOO_LARGE");
    // Without a Content-Length the limit is enforced while the body streams in.
    let (status, body) = chunked_upload(&server, &alice, &[&[1; 600], &[2; 600]]).await;
    assert!(status.contains("413") && body.contains("M_TOO_LARGE"), "{status} {body}");
    let (status, body) = chunked_upload(&server, &alice, &[&[1; 500], &[2; 500]]).await;
    assert!(status.contains("200") && body.contains("mxc://"), "{status} {body}");
    assert_eq!(stored_files(&server.config.data_dir.join("media")), 1, "refused uploads leave nothing behind");
    // 1000 of the 1500 quota bytes are used.
    let r = raw(Some(&alice), &server, Method::POST, "/_matrix/media/v3/upload", Some(("text/plain", vec![b'b'; 600])))
        .await;
    r.assert_error(403, "M_FORBIDDEN");
    upload(&server, &alice, vec![b'c'; 500], "text/plain", None).await;
}

#[tokio::test]
async fn uploads_are_rate_limited_per_user() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        c.media.upload_burst = 2.0;
        c.media.upload_per_second = 0.01;
    })
    .await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    upload(&server, &alice, b"1".to_vec(), "text/plain", None).await;
    upload(&server, &alice, b"2".to_vec(), "text/plain", None).await;
    let r =
        raw(Some(&alice), &server, Method::POST, "/_matrix/media/v3/upload", Some(("text/plain", b"3".to_vec()))).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert!(r.json()["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{:?}", r.json());
    // Another user has their own allowance.
    upload(&server, &bob, b"4".to_vec(), "text/plain", None).await;
}

#[tokio::test]
async fn legacy_endpoints_serve_media_before_the_cutover() {
    let cutover = plexus::storage::now_ms() + 3_600_000;
    let server = TestServer::start_with(|c| c.media.legacy_cutover_ts = Some(cutover)).await;
    let alice = server.register("alice").await;
    let (s, id) = upload(&server, &alice, png(64, 48), "image/png", Some("old.png")).await;
    let r = raw(None, &server, Method::GET, &format!("/_matrix/media/v3/download/{s}/{id}"), None).await;
    assert_eq!((r.status, r.header("content-disposition")), (StatusCode::OK, "inline; filename=\"old.png\""));
    let r = raw(
        None,
        &server,
        Method::GET,
        &format!("/_matrix/media/v3/thumbnail/{s}/{id}?width=32&height=32&method=crop"),
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(image_size(&r.bytes), (32, 32));
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 256) as u8])
    });
    let mut bytes = Vec::new();
    image::DynamicImage::ImageRgb8(img).write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).unwrap();
    bytes
}

fn animated_gif() -> Vec<u8> {
    let mut bytes = Vec::new();
    {
        let mut encoder = image::codecs::gif::GifEncoder::new(&mut bytes);
        let frames = [[255u8, 0, 0, 255], [0, 0, 255, 255]]
            .map(|color| image::Frame::new(image::RgbaImage::from_pixel(120, 90, image::Rgba(color))));
        encoder.encode_frames(frames).unwrap();
    }
    bytes
}

fn image_size(bytes: &[u8]) -> (u32, u32) {
    let img = image::load_from_memory(bytes).expect("an image");
    (img.width(), img.height())
}

#[tokio::test]
async fn thumbnails() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let original = png(640, 480);
    let (s, id) = upload(&server, &alice, original.clone(), "image/png", Some("pic.png")).await;
    let thumb = |query: &str| {
        let path = format!("{V1}/thumbnail/{s}/{id}?{query}");
        let (server, alice) = (&server, &alice);
        async move { raw(Some(alice), server, Method::GET, &path, None).await }
    };

    let r = thumb("width=32&height=32&method=crop").await;
    assert_eq!((r.status, r.header("content-type")), (StatusCode::OK, "image/png"));
    assert_eq!(r.header("content-disposition"), "inline; filename=\"thumbnail.png\"");
    assert_eq!(r.header("x-content-type-options"), "nosniff");
    assert_eq!(image_size(&r.bytes), (32, 32));
    // Served again from the cache, byte for byte.
    assert_eq!(thumb("width=32&height=32&method=crop").await.bytes, r.bytes);
    assert_eq!(image_size(&thumb("width=50&height=40&method=crop").await.bytes), (96, 96));
    assert_eq!(image_size(&thumb("width=320&height=240&method=scale").await.bytes), (320, 240));
    // Snapped up to the next common size, aspect kept, within bounds.
    let (w, h) = image_size(&thumb("width=100&height=100").await.bytes);
    assert!(w <= 320 && h <= 240 && (w == 320 || h == 240), "{w}x{h}");
    // Asking for more than the image has: the original itself.
    assert_eq!(thumb("width=800&height=600&method=scale").await.bytes, original);

    thumb("width=0&height=32").await.assert_error(400, "M_INVALID_PARAM");
    thumb("width=32&height=32&method=stretch").await.assert_error(400, "M_INVALID_PARAM");
    thumb("height=32").await.assert_error(400, "M_MISSING_PARAM");
    raw(None, &server, Method::GET, &format!("{V1}/thumbnail/{s}/{id}?width=32&height=32"), None)
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    raw(Some(&alice), &server, Method::GET, &format!("{V1}/thumbnail/{s}/Unknown?width=32&height=32"), None)
        .await
        .assert_error(404, "M_NOT_FOUND");
    raw(None, &server, Method::GET, &format!("/_matrix/media/v3/thumbnail/{s}/{id}?width=32&height=32"), None)
        .await
        .assert_error(404, "M_NOT_FOUND");

    // Text claiming to be an image cannot be thumbnailed.
    let (_, text_id) = upload(&server, &alice, b"not an image".to_vec(), "image/png", None).await;
    raw(Some(&alice), &server, Method::GET, &format!("{V1}/thumbnail/{s}/{text_id}?width=32&height=32"), None)
        .await
        .assert_error(400, "M_UNKNOWN");

    // Animated GIF: an animation at the size when asked for (the original when it already
    // fits), else a still image.
    let gif = animated_gif();
    let (_, gif_id) = upload(&server, &alice, gif.clone(), "image/gif", None).await;
    let path = format!("{V1}/thumbnail/{s}/{gif_id}?width=32&height=32&method=crop");
    let r = raw(Some(&alice), &server, Method::GET, &format!("{path}&animated=true"), None).await;
    assert_eq!(
        (r.header("content-type"), r.header("content-disposition")),
        ("image/gif", "inline; filename=\"thumbnail.gif\"")
    );
    let decoder = image::codecs::gif::GifDecoder::new(Cursor::new(&r.bytes)).unwrap();
    let frames = image::AnimationDecoder::into_frames(decoder).collect_frames().unwrap();
    assert_eq!(frames.len(), 2);
    assert_eq!(frames[0].buffer().dimensions(), (32, 32));
    let fits = format!("{V1}/thumbnail/{s}/{gif_id}?width=320&height=240&animated=true");
    assert_eq!(raw(Some(&alice), &server, Method::GET, &fits, None).await.bytes, gif);
    let r = raw(Some(&alice), &server, Method::GET, &path, None).await;
    assert_eq!(r.header("content-type"), "image/png");
    assert_eq!(image_size(&r.bytes), (32, 32));
}

fn key<'a>(media_id: &'a str, t: &Target) -> ThumbnailKey<'a> {
    ThumbnailKey {
        remote_server: None,
        media_id,
        width: t.width,
        height: t.height,
        method: t.method.as_str(),
        animated: false,
    }
}

/// Whether every common size of a local media has a thumbnail and none is pending.
async fn all_thumbnails_made(server: &TestServer, media_id: &str) -> bool {
    let db = &server.state.db;
    for t in &COMMON_SIZES {
        if media::get_thumbnail(db, &key(media_id, t)).await.unwrap().is_none() {
            return false;
        }
    }
    media::thumbnails_pending(db, i64::MAX, 100).await.unwrap().is_empty()
}

#[tokio::test]
async fn thumbnails_are_made_at_upload() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let (s, id) = upload(&server, &alice, png(640, 480), "image/png", None).await;
    wait_for("the thumbnails of the upload", async || all_thumbnails_made(&server, &id).await).await;
    // Requests are served what was made at upload.
    let made = media::get_thumbnail(&server.state.db, &key(&id, &COMMON_SIZES[1])).await.unwrap().unwrap();
    let r = raw(
        Some(&alice),
        &server,
        Method::GET,
        &format!("{V1}/thumbnail/{s}/{id}?width=90&height=90&method=crop"),
        None,
    )
    .await;
    assert_eq!(r.bytes, std::fs::read(server.state.media.store.path(&made.content)).unwrap());
    assert_eq!(image_size(&r.bytes), (96, 96));
    // Other content has nothing to make.
    upload(&server, &alice, b"words".to_vec(), "text/plain", None).await;
    assert!(media::thumbnails_pending(&server.state.db, i64::MAX, 100).await.unwrap().is_empty());
}

#[tokio::test]
async fn thumbnail_sizes_are_configurable() {
    let server = TestServer::start_with(|c| {
        c.media.thumbnail_sizes = vec![
            Target { width: 64, height: 64, method: ThumbnailMethod::Crop },
            Target { width: 200, height: 150, method: ThumbnailMethod::Scale },
        ];
    })
    .await;
    let alice = server.register("alice").await;
    let (s, id) = upload(&server, &alice, png(640, 480), "image/png", None).await;
    let size = |query: &str| {
        let path = format!("{V1}/thumbnail/{s}/{id}?{query}");
        let (server, alice) = (&server, &alice);
        async move { image_size(&raw(Some(alice), server, Method::GET, &path, None).await.bytes) }
    };
    assert_eq!(size("width=32&height=32&method=crop").await, (64, 64));
    assert_eq!(size("width=100&height=100&method=crop").await, (64, 64));
    assert_eq!(size("width=32&height=32&method=scale").await, (200, 150));
    assert_eq!(size("width=800&height=600").await, (200, 150));
}

#[tokio::test]
async fn housekeeping_resumes_cut_short_thumbnails_and_forgets_expired_ids_and_previews() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let state = &server.state;
    // As a crash would leave them: an image whose thumbnails were never made, and a media
    // ID created long ago and never uploaded to.
    let content = state.media.store.write_bytes(png(300, 200)).await.unwrap();
    let long_ago = plexus::storage::now_ms() - 10 * 60_000;
    let upload = media::Upload { content: &content, content_type: "image/png", file_name: None };
    let mut tx = state.db.begin().await.unwrap();
    media::insert_uploaded(&mut tx, "CutShort", &alice.user_id, &upload, true, long_ago).await.unwrap();
    media::insert_pending(&mut tx, "NeverUploaded", &alice.user_id, long_ago, long_ago + 1).await.unwrap();
    media::put_preview(&mut tx, "https://old.example/", "{}", long_ago, long_ago + 1).await.unwrap();
    media::put_preview(&mut tx, "https://new.example/", "{}", long_ago, i64::MAX).await.unwrap();
    tx.commit().await.unwrap();
    assert!(!all_thumbnails_made(&server, "CutShort").await);
    plexus::media::housekeep(state).await.unwrap();
    assert!(all_thumbnails_made(&server, "CutShort").await);
    assert!(media::get(&state.db, "NeverUploaded").await.unwrap().is_none());
    assert!(media::get(&state.db, "CutShort").await.unwrap().is_some());
    // Expired previews are gone (read as of time 0, when both were valid).
    assert!(media::get_preview(&state.db, "https://old.example/", 0).await.unwrap().is_none());
    assert!(media::get_preview(&state.db, "https://new.example/", 0).await.unwrap().is_some());
}

/// A tiny web server on loopback for previews: a page with OpenGraph tags, its image, and a
/// redirect to the page. Counts the requests it answers.
async fn start_web_server() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
    use axum::response::{Html, IntoResponse, Redirect};
    let hits = Arc::new(AtomicUsize::new(0));
    let page = r#"<html><head><title>Fallback title</title>
        <meta property="og:title" content="Plexus &amp; friends">
        <meta name="description" content="A page about a homeserver">
        <meta property="og:image" content="/img.png"><meta property="og:image:width" content="9999">
        </head><body>hello</body></html>"#;
    let counted = |hits: Arc<AtomicUsize>| {
        move |req: axum::extract::Request, next: axum::middleware::Next| {
            hits.fetch_add(1, Ordering::SeqCst);
            next.run(req)
        }
    };
    let app = axum::Router::new()
        .route("/page", axum::routing::get(move || async move { Html(page) }))
        .route(
            "/img.png",
            axum::routing::get(|| async { ([("content-type", "image/png")], png(60, 40)).into_response() }),
        )
        .route("/moved", axum::routing::get(|| async { Redirect::temporary("/page") }))
        .layer(axum::middleware::from_fn(counted(hits.clone())));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, hits)
}

#[tokio::test]
async fn url_previews() {
    let (web, hits) = start_web_server().await;
    let server = TestServer::start_with(|c| {
        c.media.url_previews = true;
        c.media.preview_ip_allowlist = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let alice = server.register("alice").await;
    let preview = |user: &TestUser, url: String| {
        let path = format!(
            "{V1}/preview_url?url={}",
            url::form_urlencoded::byte_serialize(url.as_bytes()).collect::<String>()
        );
        let user = user.clone();
        async move { user.get(&path).await }
    };

    let og = preview(&alice, format!("http://{web}/moved")).await.ok();
    assert_eq!(og["og:title"], json!("Plexus & friends"));
    assert_eq!(og["og:description"], json!("A page about a homeserver"));
    assert_eq!((og["og:image:width"].clone(), og["og:image:height"].clone()), (json!(60), json!(40)));
    assert_eq!(og["og:image:type"], json!("image/png"));
    let image = png(60, 40);
    assert_eq!(og["matrix:image:size"], json!(image.len()));
    let mxc = og["og:image"].as_str().expect("og:image");
    let (s, id) = mxc.strip_prefix("mxc://").unwrap().split_once('/').unwrap();
    assert_eq!(download(&server, Some(&alice), s, id).await.bytes, image);
    assert_eq!(hits.load(Ordering::SeqCst), 3, "redirect, page and image fetched");
    // Cached: the same answer without fetching again.
    assert_eq!(preview(&alice, format!("http://{web}/moved")).await.ok(), og);
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    preview(&alice, "ftp://example.org/x".into()).await.assert_error(400, "M_INVALID_PARAM");
    alice.get(&format!("{V1}/preview_url")).await.assert_error(400, "M_MISSING_PARAM");

    // Loopback is refused unless allow-listed, and previews are off unless enabled.
    let strict = TestServer::start_with(|c| c.media.url_previews = true).await;
    let bob = strict.register("bob").await;
    preview(&bob, format!("http://{web}/page")).await.assert_error(403, "M_FORBIDDEN");
    preview(&bob, format!("http://127.1:{}/page", web.port())).await.assert_error(403, "M_FORBIDDEN");
    // Names are checked after resolution.
    preview(&bob, format!("http://localhost:{}/page", web.port())).await.assert_error(403, "M_FORBIDDEN");
    assert_eq!(hits.load(Ordering::SeqCst), 3);
    let off = TestServer::start().await;
    let carol = off.register("carol").await;
    preview(&carol, format!("http://{web}/page")).await.assert_error(404, "M_UNRECOGNIZED");
}

const A1: &str = "/_synapse/admin/v1";

async fn make_admin(server: &TestServer, localpart: &str) -> TestUser {
    let user = server.register(localpart).await;
    let mut tx = server.state.db.begin().await.unwrap();
    plexus::storage::users::set_admin(&mut tx, &user.user_id, true).await.unwrap();
    tx.commit().await.unwrap();
    user
}

#[tokio::test]
async fn admin_usage_statistics_and_user_media() {
    let server = TestServer::start().await;
    let admin = make_admin(&server, "root").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let (_, first) = upload(&server, &alice, vec![1; 300], "application/octet-stream", Some("first.bin")).await;
    upload(&server, &alice, vec![2; 200], "application/octet-stream", None).await;
    upload(&server, &bob, vec![3; 1000], "application/octet-stream", None).await;

    let stats = admin.get(&format!("{A1}/statistics/users/media")).await.ok();
    assert_eq!(stats["total"], json!(2));
    assert_eq!(stats["users"][0]["user_id"], json!(alice.user_id));
    assert_eq!(
        (stats["users"][0]["media_count"].clone(), stats["users"][0]["media_length"].clone()),
        (json!(2), json!(500))
    );
    assert_eq!(stats["users"][0]["displayname"], json!("alice"));
    let by_size = admin.get(&format!("{A1}/statistics/users/media?order_by=media_length&dir=b&limit=1")).await.ok();
    assert_eq!(by_size["users"][0]["user_id"], json!(bob.user_id));
    assert_eq!((by_size["users"].as_array().unwrap().len(), by_size["next_token"].clone()), (1, json!(1)));
    let search = admin.get(&format!("{A1}/statistics/users/media?search_term=BOB")).await.ok();
    assert_eq!((search["total"].clone(), search["users"][0]["media_length"].clone()), (json!(1), json!(1000)));
    let later = admin.get(&format!("{A1}/statistics/users/media?from_ts={}", plexus::storage::now_ms() + 60_000)).await;
    assert_eq!(later.ok()["total"], json!(0));
    for bad in ["order_by=size", "search_term=", "from_ts=10&until_ts=5", "from_ts=-1", "dir=x"] {
        admin.get(&format!("{A1}/statistics/users/media?{bad}")).await.assert_error(400, "M_INVALID_PARAM");
    }

    // A user's media: oldest first unless asked otherwise.
    let listed = admin.get(&format!("{A1}/users/{}/media", enc(&alice.user_id))).await.ok();
    assert_eq!((listed["total"].clone(), listed["media"][0]["media_id"].clone()), (json!(2), json!(first)));
    assert_eq!(listed["media"][0]["upload_name"], json!("first.bin"));
    assert!(listed["media"][0]["last_access_ts"].as_i64().is_some());
    let by_size = admin.get(&format!("{A1}/users/{}/media?order_by=media_length&dir=b", enc(&alice.user_id))).await;
    assert_eq!(by_size.ok()["media"][0]["media_length"], json!(300));
    let path = format!("{A1}/users/{}/media?order_by=nonsense", enc(&alice.user_id));
    admin.get(&path).await.assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn admin_deletes_media_by_age_keeping_shared_files() {
    let server = TestServer::start().await;
    let admin = make_admin(&server, "root").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let media_dir = server.config.data_dir.join("media");
    let (s, large) = upload(&server, &alice, vec![7; 1000], "application/octet-stream", None).await;
    let (_, small) = upload(&server, &alice, vec![8; 10], "application/octet-stream", None).await;
    let (_, avatar) = upload(&server, &alice, vec![9; 500], "application/octet-stream", None).await;
    let (_, quarantined) = upload(&server, &alice, vec![10; 500], "application/octet-stream", None).await;
    let (_, same_as_large) = upload(&server, &bob, vec![7; 1000], "application/octet-stream", None).await;
    let profile = format!("/_matrix/client/v3/profile/{}/avatar_url", enc(&alice.user_id));
    alice.put(&profile, json!({ "avatar_url": format!("mxc://{s}/{avatar}") })).await.ok();
    admin.post(&format!("{A1}/media/quarantine/{s}/{quarantined}"), json!({})).await.ok();
    assert_eq!(stored_files(&media_dir), 4);

    let delete = |query: String| {
        let admin = admin.clone();
        async move { admin.post(&format!("{A1}/media/delete?{query}"), json!({})).await }
    };
    delete(String::new()).await.assert_error(400, "M_MISSING_PARAM");
    delete("before_ts=1700000000".into()).await.assert_error(400, "M_INVALID_PARAM");
    delete("before_ts=-5".into()).await.assert_error(400, "M_INVALID_PARAM");
    let future = plexus::storage::now_ms() + 60_000;
    delete(format!("before_ts={future}&size_gt=-1")).await.assert_error(400, "M_INVALID_PARAM");
    // Nothing was used before an old date.
    let r = delete("before_ts=1700000000000".into()).await.ok();
    assert_eq!(r, json!({ "deleted_media": [], "total": 0 }));

    // Larger than 100 bytes: not the small one, not the avatar, not quarantined media.
    let r = delete(format!("before_ts={future}&size_gt=100")).await.ok();
    let mut deleted: Vec<String> = serde_json::from_value(r["deleted_media"].clone()).unwrap();
    deleted.sort();
    let mut expected = vec![large.clone(), same_as_large.clone()];
    expected.sort();
    assert_eq!((deleted, r["total"].clone()), (expected, json!(2)));
    download(&server, Some(&alice), &s, &large).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(stored_files(&media_dir), 3, "the shared file goes with its last user");
    let r = delete(format!("before_ts={future}&keep_profiles=false")).await.ok();
    let mut deleted: Vec<String> = serde_json::from_value(r["deleted_media"].clone()).unwrap();
    deleted.sort();
    let mut expected = vec![small.clone(), avatar.clone()];
    expected.sort();
    assert_eq!(deleted, expected);
    assert_eq!(stored_files(&media_dir), 1, "only the quarantined media's file is left");

    // Deleting one of two media with the same bytes keeps the file for the other.
    let (_, one) = upload(&server, &alice, b"shared".to_vec(), "text/plain", None).await;
    let (_, two) = upload(&server, &bob, b"shared".to_vec(), "text/plain", None).await;
    admin.delete(&format!("{A1}/media/{s}/{one}"), json!({})).await.ok();
    assert_eq!(download(&server, Some(&bob), &s, &two).await.bytes, b"shared");
    admin.delete(&format!("{A1}/media/{s}/{two}"), json!({})).await.ok();
    assert_eq!(stored_files(&media_dir), 1);
}
