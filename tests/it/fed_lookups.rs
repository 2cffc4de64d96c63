//! Lookups on other servers between two real Plexus servers (127.0.0.1 and 127.0.0.2, plain
//! HTTP): remote media (downloads, thumbnails, caching, errors), E2EE keys, profiles and
//! room directories.

use std::io::Cursor;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use reqwest::StatusCode;
use reqwest::header::HeaderMap;
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

#[tokio::test]
async fn purging_the_remote_media_cache_fetches_again() {
    let a = fed_server("127.0.0.1", |_| {}).await;
    let b = fed_server("127.0.0.2", |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let admin = b.register("root").await;
    let mut tx = b.state.db.begin().await.unwrap();
    plexus::storage::users::set_admin(&mut tx, &admin.user_id, true).await.unwrap();
    tx.commit().await.unwrap();
    let picture = upload(&alice, "image/png", "picture.png", png(200, 100)).await;
    let thumbnail =
        format!("/_matrix/client/v1/media/thumbnail/{}/{picture}?width=32&height=32&method=crop", a.server_name);
    assert_eq!(get_raw(&bob, &download_path(&a, &picture)).await.status, StatusCode::OK);
    assert_eq!(get_raw(&bob, &thumbnail).await.status, StatusCode::OK);
    // Of this one only a thumbnail is fetched (from the origin), never the original.
    let avatar = upload(&alice, "image/png", "avatar.png", png(300, 300)).await;
    let avatar_thumbnail =
        format!("/_matrix/client/v1/media/thumbnail/{}/{avatar}?width=96&height=96&method=crop", a.server_name);
    let avatar_file = get_raw(&bob, &avatar_thumbnail).await.bytes;
    assert_eq!(image::load_from_memory(&avatar_file).unwrap().width(), 96);
    let cached = || plexus::storage::media::get_remote(&b.state.db, &a.server_name, &picture);
    let file = b.state.media.store.path(&cached().await.unwrap().expect("cached").content);

    let purge = |before_ts: i64| {
        let admin = admin.clone();
        async move { admin.post(&format!("/_synapse/admin/v1/purge_media_cache?before_ts={before_ts}"), json!({})).await }
    };
    purge(1).await.assert_error(400, "M_INVALID_PARAM");
    admin.post("/_synapse/admin/v1/purge_media_cache", json!({})).await.assert_error(400, "M_MISSING_PARAM");
    assert_eq!(purge(1_700_000_000_000).await.ok(), json!({ "deleted": 0 }));
    assert_eq!(purge(plexus::storage::now_ms() + 60_000).await.ok(), json!({ "deleted": 2 }));
    assert!(cached().await.unwrap().is_none());
    assert!(!file.exists(), "the cached file is deleted");
    let key = plexus::storage::media::ThumbnailKey {
        remote_server: Some(&a.server_name),
        media_id: &avatar,
        width: 96,
        height: 96,
        method: "crop",
        animated: false,
    };
    assert!(plexus::storage::media::get_thumbnail(&b.state.db, &key).await.unwrap().is_none());
    // Asked again, it is fetched again from its origin.
    assert_eq!(get_raw(&bob, &download_path(&a, &picture)).await.bytes, png(200, 100));
    assert!(file.exists());
}

/// A new ed25519 key pair named `ed25519:<name>` (or by its public key), with that public key.
fn key_pair(name: Option<&str>) -> (ruma::signatures::Ed25519KeyPair, String) {
    use base64::Engine;
    let der = ruma::signatures::Ed25519KeyPair::generate();
    let public = ruma::signatures::Ed25519KeyPair::from_der(&der, String::new()).unwrap().public_key();
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(public);
    let pair = ruma::signatures::Ed25519KeyPair::from_der(&der, name.unwrap_or(&public).to_owned()).unwrap();
    (pair, public)
}

fn sign(object: Value, signer: &str, pair: &ruma::signatures::Ed25519KeyPair) -> Value {
    let mut canonical: ruma::CanonicalJsonObject = serde_json::from_value(object).unwrap();
    ruma::signatures::sign_json(signer, pair, &mut canonical).unwrap();
    serde_json::to_value(canonical).unwrap()
}

/// Device keys of `device`, signed by the device's ed25519 key.
fn device_keys(user: &str, device: &str) -> Value {
    let (pair, public) = key_pair(Some(device));
    let keys = json!({
        "user_id": user,
        "device_id": device,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": { format!("curve25519:{device}"): key_pair(None).1, format!("ed25519:{device}"): public },
    });
    sign(keys, user, &pair)
}

/// A cross-signing key of `user`; with `signer`, signed by it.
fn cross_key(user: &str, usage: &str, signer: Option<&ruma::signatures::Ed25519KeyPair>) -> Value {
    let public = key_pair(None).1;
    let key = json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } });
    match signer {
        Some(pair) => sign(key, user, pair),
        None => key,
    }
}

/// A server name on 127.0.0.3 where nothing listens.
async fn unreachable_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    listener.local_addr().unwrap().to_string()
}

#[tokio::test]
async fn remote_keys_are_queried_and_claimed() {
    let a = fed_server("127.0.0.1", |_| {}).await;
    let b = fed_server("127.0.0.2", |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let (user, device) = (alice.user_id.as_str(), alice.device_id.as_str());
    let alice_device = device_keys(user, device);
    let one_time_key = json!({ "key": key_pair(None).1 });
    let upload = json!({ "device_keys": alice_device, "one_time_keys": { "signed_curve25519:AAAA1": one_time_key } });
    alice.post("/_matrix/client/v3/keys/upload", upload).await.ok();
    let (master_pair, master_public) = key_pair(None);
    let master =
        json!({ "user_id": user, "usage": ["master"], "keys": { format!("ed25519:{master_public}"): master_public } });
    let self_signing = cross_key(user, "self_signing", Some(&master_pair));
    let signing = json!({
        "master_key": master, "self_signing_key": self_signing,
        "user_signing_key": cross_key(user, "user_signing", Some(&master_pair)),
    });
    alice.post("/_matrix/client/v3/keys/device_signing/upload", signing).await.ok();

    let nowhere = unreachable_server().await;
    let query = json!({ "device_keys": { user: [], format!("@ghost:{nowhere}"): [] }, "timeout": 5000 });
    let answer = bob.post("/_matrix/client/v3/keys/query", query).await.ok();
    let mut expected = alice_device.clone();
    expected["unsigned"] = json!({ "device_display_name": "test" });
    assert_eq!(answer["device_keys"], json!({ user: { device: expected } }));
    assert_eq!(answer["master_keys"], json!({ user: master }));
    assert_eq!(answer["self_signing_keys"], json!({ user: self_signing }));
    assert_eq!(answer["user_signing_keys"], json!({}));
    assert_eq!(answer["failures"].as_object().unwrap().keys().collect::<Vec<_>>(), vec![&nowhere]);
    // Only the devices asked for.
    let query = json!({ "device_keys": { user: ["OTHER"] } });
    let answer = bob.post("/_matrix/client/v3/keys/query", query).await.ok();
    assert_eq!((&answer["device_keys"], &answer["failures"]), (&json!({ user: {} }), &json!({})));

    let claim = json!({ "one_time_keys": { user: { device: "signed_curve25519" }, format!("@ghost:{nowhere}"): { "D": "signed_curve25519" } } });
    let claimed = bob.post("/_matrix/client/v3/keys/claim", claim.clone()).await.ok();
    assert_eq!(claimed["one_time_keys"], json!({ user: { device: { "signed_curve25519:AAAA1": one_time_key } } }));
    assert_eq!(claimed["failures"].as_object().unwrap().keys().collect::<Vec<_>>(), vec![&nowhere]);
    let again = bob.post("/_matrix/client/v3/keys/claim", claim).await.ok();
    assert_eq!(again["one_time_keys"], json!({}));
}

/// A server on 127.0.0.3 that answers every key query and claim with what `answers` makes
/// for its server name.
async fn lying_server(answers: impl FnOnce(&str) -> (Value, Value)) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let name = listener.local_addr().unwrap().to_string();
    let (query, claim) = answers(&name);
    let app = axum::Router::new()
        .route("/_matrix/federation/v1/user/keys/query", axum::routing::post(move || async move { axum::Json(query) }))
        .route("/_matrix/federation/v1/user/keys/claim", axum::routing::post(move || async move { axum::Json(claim) }));
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    name
}

#[tokio::test]
async fn keys_from_other_servers_are_checked() {
    let b = fed_server("127.0.0.2", |_| {}).await;
    let bob = b.register("bob").await;
    let (mut good, mut master) = (Value::Null, Value::Null);
    let name = lying_server(|name| {
        let (eve, mallory) = (format!("@eve:{name}"), format!("@mallory:{name}"));
        good = device_keys(&eve, "GOOD");
        master = cross_key(&eve, "master", None);
        let mut forged = device_keys(&eve, "FORGED");
        forged["algorithms"] = json!(["changed.after.signing"]);
        let query = json!({
            "device_keys": {
                eve.clone(): {
                    "GOOD": good,
                    "FORGED": forged,
                    // Under another device ID than the keys name.
                    "SWAPPED": device_keys(&eve, "OTHER"),
                    "NOTASKED": device_keys(&eve, "NOTASKED"),
                },
                // A user nobody asked about.
                mallory.clone(): { "M": device_keys(&mallory, "M") },
            },
            "master_keys": { eve.clone(): master },
            // Not signed by the master key.
            "self_signing_keys": { eve.clone(): cross_key(&eve, "self_signing", None) },
        });
        let claim = json!({ "one_time_keys": {
            eve.clone(): { "GOOD": { "signed_curve25519:K1": { "key": "k1" } }, "FORGED": { "curve25519:K2": "k2" } },
            mallory: { "M": { "signed_curve25519:K3": { "key": "k3" } } },
        } });
        (query, claim)
    })
    .await;
    let eve = format!("@eve:{name}");

    let query = json!({ "device_keys": { eve.clone(): ["GOOD", "FORGED", "SWAPPED"] } });
    let answer = bob.post("/_matrix/client/v3/keys/query", query).await.ok();
    assert_eq!(answer["device_keys"], json!({ eve.clone(): { "GOOD": good } }));
    assert_eq!(answer["master_keys"], json!({ eve.clone(): master }));
    assert_eq!((&answer["self_signing_keys"], &answer["failures"]), (&json!({}), &json!({})));

    let claim =
        json!({ "one_time_keys": { eve.clone(): { "GOOD": "signed_curve25519", "FORGED": "signed_curve25519" } } });
    let claimed = bob.post("/_matrix/client/v3/keys/claim", claim).await.ok();
    assert_eq!(claimed["one_time_keys"], json!({ eve: { "GOOD": { "signed_curve25519:K1": { "key": "k1" } } } }));
}

#[tokio::test]
async fn remote_profiles_and_room_directories() {
    let a = fed_server("127.0.0.1", |_| {}).await;
    let b = fed_server("127.0.0.2", |_| {}).await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let alice_profile = format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id));
    alice.put(&format!("{alice_profile}/displayname"), json!({ "displayname": "Alice" })).await.ok();
    alice.put(&format!("{alice_profile}/avatar_url"), json!({ "avatar_url": "mxc://a/pic" })).await.ok();

    assert_eq!(bob.get(&alice_profile).await.ok(), json!({ "displayname": "Alice", "avatar_url": "mxc://a/pic" }));
    assert_eq!(bob.get(&format!("{alice_profile}/displayname")).await.ok(), json!({ "displayname": "Alice" }));
    assert_eq!(bob.get(&format!("{alice_profile}/avatar_url")).await.ok(), json!({ "avatar_url": "mxc://a/pic" }));
    let carol = a.register("carol").await;
    let carol_profile = format!("/_matrix/client/v3/profile/{}", enc(&carol.user_id));
    bob.get(&format!("{carol_profile}/displayname")).await.ok();
    bob.get(&format!("{carol_profile}/avatar_url")).await.assert_error(404, "M_NOT_FOUND");
    let nobody = format!("/_matrix/client/v3/profile/{}", enc(&format!("@nobody:{}", a.server_name)));
    bob.get(&nobody).await.assert_error(404, "M_NOT_FOUND");
    let nowhere = unreachable_server().await;
    let ghost = format!("/_matrix/client/v3/profile/{}", enc(&format!("@ghost:{nowhere}")));
    bob.get(&ghost).await.assert_error(502, "M_UNKNOWN");

    // A's directory, asked by B's user with GET and POST (filtered, paged).
    let lobby = alice.create_room(json!({ "visibility": "public", "name": "The Lobby" })).await;
    let kitchen = alice.create_room(json!({ "visibility": "public", "name": "Kitchen" })).await;
    alice.create_room(json!({ "visibility": "private", "name": "Secret" })).await;
    let server = enc(&a.server_name);
    let listed = bob.get(&format!("/_matrix/client/v3/publicRooms?server={server}")).await.ok();
    let mut ids: Vec<&str> =
        listed["chunk"].as_array().unwrap().iter().map(|r| r["room_id"].as_str().unwrap()).collect();
    ids.sort();
    let mut expected = vec![lobby.as_str(), kitchen.as_str()];
    expected.sort();
    assert_eq!((ids, &listed["total_room_count_estimate"]), (expected, &json!(2)));
    let page = bob.get(&format!("/_matrix/client/v3/publicRooms?server={server}&limit=1")).await.ok();
    assert_eq!(page["chunk"].as_array().unwrap().len(), 1);
    let next = page["next_batch"].as_str().expect("next_batch");
    let rest =
        bob.get(&format!("/_matrix/client/v3/publicRooms?server={server}&limit=1&since={}", enc(next))).await.ok();
    assert_ne!(rest["chunk"][0]["room_id"], page["chunk"][0]["room_id"]);
    let search = json!({ "filter": { "generic_search_term": "lobby" } });
    let found = bob.post(&format!("/_matrix/client/v3/publicRooms?server={server}"), search).await.ok();
    assert_eq!(found["chunk"].as_array().unwrap().len(), 1);
    assert_eq!((&found["chunk"][0]["room_id"], &found["chunk"][0]["name"]), (&json!(lobby), &json!("The Lobby")));
    let unreachable = bob.get(&format!("/_matrix/client/v3/publicRooms?server={}", enc(&nowhere))).await;
    unreachable.assert_error(502, "M_UNKNOWN");
}

/// A media server on 127.0.0.3 answering downloads of `slow` after 3 s, of `elsewhere` with
/// a `Location` to plain HTTP, of `counted` after 300 ms (counting the requests), and of
/// anything else with a body that is not multipart.
async fn odd_media_server(counted: Arc<AtomicUsize>) -> String {
    use axum::extract::Path;
    use axum::response::IntoResponse;
    let download = move |Path(media_id): Path<String>| async move {
        let multipart = |second: &str| {
            let body = format!(
                "--b\r\nContent-Type: application/json\r\n\r\n{{}}\r\n--b\r\n{second}\r\n\r\nbytes\r\n--b--\r\n"
            );
            ([("content-type", "multipart/mixed; boundary=b")], body).into_response()
        };
        match media_id.as_str() {
            "slow" => {
                tokio::time::sleep(Duration::from_secs(3)).await;
                multipart("Content-Type: text/plain")
            }
            "counted" => {
                counted.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(300)).await;
                multipart("Content-Type: text/plain")
            }
            "elsewhere" => multipart("Location: http://example.org/media"),
            _ => ([("content-type", "text/plain")], "not multipart").into_response(),
        }
    };
    let app =
        axum::Router::new().route("/_matrix/federation/v1/media/download/{media_id}", axum::routing::get(download));
    let listener = tokio::net::TcpListener::bind("127.0.0.3:0").await.unwrap();
    let name = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    name
}

#[tokio::test]
async fn remote_media_timeouts_and_bad_answers() {
    let b = fed_server("127.0.0.2", |_| {}).await;
    let bob = b.register("bob").await;
    let counted = Arc::new(AtomicUsize::new(0));
    let odd = odd_media_server(counted.clone()).await;
    let path = |media_id: &str, query: &str| format!("/_matrix/client/v1/media/download/{odd}/{media_id}{query}");
    get_raw(&bob, &path("slow", "?timeout_ms=500")).await.assert_error(504, "M_NOT_YET_UPLOADED");
    // Waiting long enough, the same media arrives.
    let slow = get_raw(&bob, &path("slow", "?timeout_ms=10000")).await;
    assert_eq!((slow.status, slow.bytes.as_slice()), (StatusCode::OK, &b"bytes"[..]));
    // Redirects are followed to HTTPS only; answers that are not multipart are refused.
    get_raw(&bob, &path("elsewhere", "")).await.assert_error(502, "M_UNKNOWN");
    get_raw(&bob, &path("garbage", "")).await.assert_error(502, "M_UNKNOWN");
    for media_id in ["elsewhere", "garbage"] {
        assert!(plexus::storage::media::get_remote(&b.state.db, &odd, media_id).await.unwrap().is_none());
    }

    // Clients asking at once for the same media: the origin is asked once.
    let counted_path = path("counted", "");
    let answers = futures::future::join_all((0..6).map(|_| get_raw(&bob, &counted_path))).await;
    assert!(answers.iter().all(|a| a.status == StatusCode::OK && a.bytes == b"bytes"));
    assert_eq!(get_raw(&bob, &path("counted", "")).await.bytes, b"bytes");
    assert_eq!(counted.load(Ordering::SeqCst), 1);
}
