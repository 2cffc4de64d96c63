//! Cross-cutting HTTP behaviour: the spec's error answers, rate limits, CORS, metrics, and
//! the signed key response.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::TestServer;

const C: &str = "/_matrix/client/v3";

#[tokio::test]
async fn error_cases() {
    let server = TestServer::start().await;
    let user = server.register("alice").await;
    server.get(&format!("{C}/nonexistent")).await.assert_error(404, "M_UNRECOGNIZED");
    user.get(&format!("{C}/nonexistent")).await.assert_error(404, "M_UNRECOGNIZED");
    server.get("/totally/elsewhere").await.assert_error(404, "M_UNRECOGNIZED");
    server.request(Method::DELETE, "/_matrix/client/versions", None, None).await.assert_error(405, "M_UNRECOGNIZED");
    user.post(&format!("{C}/account/whoami"), json!({})).await.assert_error(405, "M_UNRECOGNIZED");

    server.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_MISSING_TOKEN");
    server
        .request(Method::GET, &format!("{C}/account/whoami"), Some("nope"), None)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    // The deprecated query parameter is still a token.
    let who = server.get(&format!("{C}/account/whoami?access_token={}", user.token)).await.ok();
    assert_eq!(who["user_id"], json!(user.user_id));
    server.get(&format!("{C}/account/whoami?access_token=nope")).await.assert_error(401, "M_UNKNOWN_TOKEN");

    let login = format!("{C}/login");
    server.request_raw(Method::POST, &login, None, b"{not json".to_vec()).await.assert_error(400, "M_NOT_JSON");
    server.request(Method::POST, &login, None, Some(&json!({"type": 5}))).await.assert_error(400, "M_BAD_JSON");
    server.request(Method::POST, &login, None, Some(&json!([1, 2]))).await.assert_error(400, "M_BAD_JSON");
    let displayname = format!("{C}/profile/{}/displayname", user.user_id);
    server
        .request_raw(Method::PUT, &displayname, Some(&user.token), b"[1,2".to_vec())
        .await
        .assert_error(400, "M_NOT_JSON");
    let big = vec![b' '; 2 * 1024 * 1024];
    server.request_raw(Method::POST, &login, None, big.clone()).await.assert_error(413, "M_TOO_LARGE");
    server.request_raw(Method::PUT, &displayname, Some(&user.token), big).await.assert_error(413, "M_TOO_LARGE");

    // Every error carries a human-readable message, and none of this took the server down.
    let r = server.get(&format!("{C}/account/whoami")).await;
    assert!(r.body["error"].is_string(), "{r:?}");
    user.get(&format!("{C}/account/whoami")).await.ok();
}

#[tokio::test]
async fn rate_limits_on_login_and_registration() {
    let server = TestServer::start_with(|c| {
        c.rate_limits.enabled = true;
        c.rate_limits.per_second = 0.01;
        c.rate_limits.burst = 3.0;
    })
    .await;
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "x" },
                       "password": "y" });
    for _ in 0..3 {
        server.request(Method::POST, &format!("{C}/login"), None, Some(&body)).await.assert_error(403, "M_FORBIDDEN");
    }
    let r = server.request(Method::POST, &format!("{C}/login"), None, Some(&body)).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    assert!(r.body["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0), "{r:?}");
    // Registration has its own bucket.
    for _ in 0..3 {
        server.get(&format!("{C}/register/available?username=free")).await.ok();
    }
    server.get(&format!("{C}/register/available?username=free")).await.assert_error(429, "M_LIMIT_EXCEEDED");
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&json!({}))).await;
    r.assert_error(429, "M_LIMIT_EXCEEDED");
    // Other endpoints are not limited.
    server.get("/_matrix/client/versions").await.ok();
}

#[tokio::test]
async fn cors_headers() {
    let server = TestServer::start().await;
    let expect_cors = |headers: &reqwest::header::HeaderMap| {
        let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert_eq!(get("access-control-allow-origin"), "*");
        let methods = get("access-control-allow-methods");
        for m in ["GET", "POST", "PUT", "DELETE", "OPTIONS"] {
            assert!(methods.contains(m), "{methods}");
        }
        let allowed = get("access-control-allow-headers").to_lowercase();
        for h in ["x-requested-with", "content-type", "authorization"] {
            assert!(allowed.contains(h), "{allowed}");
        }
    };
    let resp = server
        .client
        .request(Method::OPTIONS, format!("{}{C}/login", server.base))
        .header("Origin", "https://app.element.io")
        .header("Access-Control-Request-Method", "POST")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    expect_cors(resp.headers());
    // Also for paths that do not exist (a browser asks before it knows).
    let resp = server.client.request(Method::OPTIONS, format!("{}/nowhere", server.base)).send().await.unwrap();
    assert!(resp.status().is_success(), "{resp:?}");
    expect_cors(resp.headers());
    expect_cors(&server.get("/_matrix/client/versions").await.headers);
    expect_cors(&server.get(&format!("{C}/account/whoami")).await.headers);
}

#[tokio::test]
async fn metrics_endpoint() {
    let server = TestServer::start().await;
    server.get("/metrics").await.assert_error(404, "M_UNRECOGNIZED");

    let server = TestServer::start_with(|c| c.metrics.enabled = true).await;
    server.get("/_matrix/client/versions").await.ok();
    let resp = server.client.get(format!("{}/metrics", server.base)).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert!(text.contains("plexus_http_requests_total"), "{text}");
    assert!(text.contains("path=\"/_matrix/client/versions\""), "{text}");
}

#[tokio::test]
async fn key_server_response_verifies() {
    let server = TestServer::start().await;
    let body = server.get("/_matrix/key/v2/server").await.ok();
    assert_eq!(body["server_name"], json!(server.server_name));
    assert!(body["valid_until_ts"].as_i64().is_some_and(|ts| ts > plexus::storage::now_ms()), "{body}");
    let keys = body["verify_keys"].as_object().expect("verify_keys");
    assert_eq!(keys.len(), 1);
    let (key_id, key) = keys.iter().next().unwrap();
    assert!(key_id.starts_with("ed25519:"), "{key_id}");

    let mut key_set = ruma::signatures::PublicKeySet::new();
    key_set.insert(key_id.clone(), ruma::serde::Base64::parse(key["key"].as_str().unwrap()).expect("base64 key"));
    let key_map = ruma::signatures::PublicKeyMap::from([(server.server_name.clone(), key_set)]);
    let object = |v: &Value| match ruma::CanonicalJsonValue::try_from(v.clone()).unwrap() {
        ruma::CanonicalJsonValue::Object(o) => o,
        other => panic!("not an object: {other:?}"),
    };
    ruma::signatures::verify_json(&key_map, &object(&body)).expect("the signature verifies");
    let mut tampered = body.clone();
    tampered["valid_until_ts"] = json!(1);
    assert!(ruma::signatures::verify_json(&key_map, &object(&tampered)).is_err());

    // The deprecated key-ID form of the URL answers the same key.
    let again = server.get(&format!("/_matrix/key/v2/server/{key_id}")).await.ok();
    assert_eq!(again["verify_keys"], body["verify_keys"]);
}
