//! Accounts chapter: registration, login, devices, errors.

use reqwest::Method;
use serde_json::json;

use crate::harness::TestServer;

#[tokio::test]
async fn register_login_whoami() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_eq!(alice.user_id, format!("@alice:{}", server.server_name));
    let who = alice.get("/_matrix/client/v3/account/whoami").await.ok();
    assert_eq!(who["user_id"], json!(alice.user_id));
    assert_eq!(who["device_id"], json!(alice.device_id));

    let r = server.login("alice", "password").await;
    let second = r.ok();
    assert_ne!(second["device_id"], json!(alice.device_id));
    server.login("alice", "wrong").await.assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn error_cases() {
    let server = TestServer::start().await;
    server.get("/_matrix/client/v3/nonexistent").await.assert_error(404, "M_UNRECOGNIZED");
    server.request(Method::DELETE, "/_matrix/client/versions", None, None).await.assert_error(405, "M_UNRECOGNIZED");
    server.get("/_matrix/client/v3/account/whoami").await.assert_error(401, "M_MISSING_TOKEN");
    server
        .request(Method::GET, "/_matrix/client/v3/account/whoami", Some("nope"), None)
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");
    server
        .request_raw(Method::POST, "/_matrix/client/v3/login", None, b"{not json".to_vec())
        .await
        .assert_error(400, "M_NOT_JSON");
    server
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(&json!({"type": 5})))
        .await
        .assert_error(400, "M_BAD_JSON");
    let big = vec![b' '; 2 * 1024 * 1024];
    server.request_raw(Method::POST, "/_matrix/client/v3/login", None, big).await.assert_error(413, "M_TOO_LARGE");
}
