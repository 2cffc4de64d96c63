//! TURN credentials.

use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::C;

#[tokio::test]
async fn turn_server_unconfigured_is_empty() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_eq!(alice.get(&format!("{C}/voip/turnServer")).await.ok(), json!({}));
    server.get(&format!("{C}/voip/turnServer")).await.assert_error(401, "M_MISSING_TOKEN");
}

#[tokio::test]
async fn turn_server_credentials_verify_with_the_secret() {
    let uris = vec!["turn:turn.example.org:3478?transport=udp".to_owned(), "turns:turn.example.org:443".to_owned()];
    let server = TestServer::start_with(|c| {
        c.turn.uris = uris.clone();
        c.turn.shared_secret = Some("s3cret".into());
        c.turn.ttl_seconds = 600;
    })
    .await;
    let alice = server.register("alice").await;
    let r = alice.get(&format!("{C}/voip/turnServer")).await.ok();
    assert_eq!(r["uris"], json!(uris));
    assert_eq!(r["ttl"], json!(600));
    let username = r["username"].as_str().unwrap();
    let (expiry, user) = username.split_once(':').unwrap();
    assert_eq!(user, alice.user_id);
    let expiry: i64 = expiry.parse().unwrap();
    let now = plexus::storage::now_ms() / 1000;
    assert!((now + 590..=now + 610).contains(&expiry), "{expiry} vs {now}");
    // What coturn computes with use-auth-secret.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"s3cret").unwrap();
    mac.update(username.as_bytes());
    let expected = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    assert_eq!(r["password"], json!(expected));
}
