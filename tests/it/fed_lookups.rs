//! Lookups on other servers between two real Plexus servers (127.0.0.1 and 127.0.0.2, plain
//! HTTP): remote media (downloads, thumbnails, caching, errors), E2EE keys, profiles and
//! room directories.

use std::io::Cursor;

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc};

async fn fed_server(ip: &str, adjust: impl FnOnce(&mut plexus::config::Config)) -> TestServer {
    TestServer::start_on(ip, |c| {
        c.federation.insecure_plain_http = true;
        adjust(c);
    })
    .await
}

/// An answer with its raw body.
struct Raw {
    status: StatusCode,
    headers: HeaderMap,
    bytes: Vec<u8>,
}

impl Raw {
    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    #[track_caller]
    fn assert_error(&self, status: u16, errcode: &str) {
        let body: Value = serde_json::from_slice(&self.bytes).unwrap_or(Value::Null);
        assert_eq!((self.status.as_u16(), body["errcode"].as_str()), (status, Some(errcode)), "{body}");
    }
}

async fn get_raw(user: &TestUser, path: &str) -> Raw {
    let resp = user
        .server
        .client
        .get(format!("{}{path}", user.server.base))
        .bearer_auth(&user.token)
        .send()
        .await
        .expect("request sent");
    Raw { status: resp.status(), headers: resp.headers().clone(), bytes: resp.bytes().await.expect("body").to_vec() }
}

/// Uploads bytes; returns the media ID.
async fn upload(user: &TestUser, content_type: &str, file_name: &str, bytes: Vec<u8>) -> String {
    let resp = user
        .server
        .client
        .post(format!("{}/_matrix/media/v3/upload?filename={}", user.server.base, enc(file_name)))
        .bearer_auth(&user.token)
        .header("Content-Type", content_type)
        .body(bytes)
        .send()
        .await
        .expect("upload sent");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.expect("JSON");
    let uri = body["content_uri"].as_str().expect("content_uri");
    uri.rsplit('/').next().expect("media ID").to_owned()
}

fn png(width: u32, height: u32) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 99])
    }));
    let mut bytes = Vec::new();
    image.write_to(&mut Cursor::new(&mut bytes), image::ImageFormat::Png).expect("PNG");
    bytes
}

fn download_path(server: &TestServer, media_id: &str) -> String {
    format!("/_matrix/client/v1/media/download/{}/{media_id}", server.server_name)
}

#[tokio::test]
async fn remote_media_is_fetched_once_then_served_from_the_cache() {
    let a = fed_server("127.0.0.1", |_| {}).await;
    let b = fed_server("127.0.0.2", |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let text = b"hello from the other side".to_vec();
    let media_id = upload(&alice, "text/plain", "greeting.txt", text.clone()).await;
    let picture = upload(&alice, "image/png", "picture.png", png(640, 400)).await;

    let first = get_raw(&bob, &download_path(&a, &media_id)).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.bytes, text);
    assert_eq!(first.header("content-type"), "text/plain");
    assert_eq!(first.header("content-disposition"), "inline; filename=\"greeting.txt\"");
    // A thumbnail asked of the origin, and the original picture (for a later fallback).
    let thumb = get_raw(
        &bob,
        &format!("/_matrix/client/v1/media/thumbnail/{}/{picture}?width=90&height=90&method=crop", a.server_name),
    )
    .await;
    assert_eq!(thumb.status, StatusCode::OK);
    assert_eq!(thumb.header("content-type"), "image/png");
    let image = image::load_from_memory(&thumb.bytes).expect("a thumbnail image");
    assert_eq!((image.width(), image.height()), (96, 96));
    assert_eq!(get_raw(&bob, &download_path(&a, &picture)).await.bytes, png(640, 400));
    // The origin does not have it: 404 M_NOT_FOUND; the frozen legacy endpoint never fetches.
    get_raw(&bob, &download_path(&a, "doesNotExist")).await.assert_error(404, "M_NOT_FOUND");
    let legacy = format!("/_matrix/media/v3/download/{}/{media_id}", a.server_name);
    get_raw(&bob, &legacy).await.assert_error(404, "M_NOT_FOUND");

    // With A gone, everything fetched is served from B's cache, under any file name asked.
    let a_name = a.server_name.clone();
    a.stop().await;
    let again = get_raw(&bob, &format!("/_matrix/client/v1/media/download/{a_name}/{media_id}/other.txt")).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.bytes, text);
    assert_eq!(again.header("content-disposition"), "inline; filename=\"other.txt\"");
    let thumb_path = format!("/_matrix/client/v1/media/thumbnail/{a_name}/{picture}?width=96&height=96&method=crop");
    assert_eq!(get_raw(&bob, &thumb_path).await.bytes, thumb.bytes);
    // A size the origin was never asked for: made here from the cached original.
    let scaled =
        get_raw(&bob, &format!("/_matrix/client/v1/media/thumbnail/{a_name}/{picture}?width=320&height=240")).await;
    assert_eq!(scaled.status, StatusCode::OK);
    let image = image::load_from_memory(&scaled.bytes).expect("a thumbnail image");
    assert_eq!((image.width(), image.height()), (320, 200));
    // Media never fetched cannot be had now: a bad gateway.
    let other = format!("/_matrix/client/v1/media/download/{a_name}/neverFetched?timeout_ms=2000");
    get_raw(&bob, &other).await.assert_error(502, "M_UNKNOWN");
}

#[tokio::test]
async fn remote_media_limits_and_concurrent_fetches() {
    let a = fed_server("127.0.0.1", |_| {}).await;
    let b = fed_server("127.0.0.2", |c| c.media.max_upload_bytes = 1000).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let large = upload(&alice, "application/octet-stream", "large.bin", vec![7; 5000]).await;
    get_raw(&bob, &download_path(&a, &large)).await.assert_error(502, "M_TOO_LARGE");
    let cached = plexus::storage::media::get_remote(&b.state.db, &a.server_name, &large).await.unwrap();
    assert!(cached.is_none(), "refused media is not cached");

    // Many clients asking at once: every one gets the bytes, one row is cached.
    let small = upload(&alice, "application/octet-stream", "small.bin", vec![1; 900]).await;
    let path = download_path(&a, &small);
    let answers = futures::future::join_all((0..8).map(|_| get_raw(&bob, &path))).await;
    for answer in answers {
        assert_eq!((answer.status, answer.bytes.len()), (StatusCode::OK, 900));
    }
    let cached = plexus::storage::media::get_remote(&b.state.db, &a.server_name, &small).await.unwrap();
    assert_eq!(cached.expect("cached").content.size, 900);

    // The federation answer itself: multipart/mixed, signed requests only.
    let unsigned = a.get(&format!("/_matrix/federation/v1/media/download/{small}")).await;
    unsigned.assert_error(401, "M_UNAUTHORIZED");
}
