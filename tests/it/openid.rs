//! OpenID tokens: issued to a user, exchanged by another service for the user's ID.

use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::enc;

#[tokio::test]
async fn openid_tokens_name_their_user_and_nothing_else() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let path = |user: &str| format!("/_matrix/client/v3/user/{}/openid/request_token", enc(user));

    let issued = alice.post(&path(&alice.user_id), json!({})).await.ok();
    assert_eq!(issued["token_type"], "Bearer");
    assert_eq!(issued["matrix_server_name"], server.server_name.as_str());
    assert_eq!(issued["expires_in"], 3600);
    let token = issued["access_token"].as_str().unwrap();

    let info = server.get(&format!("/_matrix/federation/v1/openid/userinfo?access_token={}", enc(token))).await.ok();
    assert_eq!(info, json!({ "sub": alice.user_id }));
    server.get("/_matrix/federation/v1/openid/userinfo?access_token=forged").await.assert_error(401, "M_UNKNOWN_TOKEN");
    server.get("/_matrix/federation/v1/openid/userinfo").await.assert_error(400, "M_MISSING_PARAM");

    // It is no access token, and nobody gets one for someone else.
    let as_access = alice.with_token(token, &alice.device_id);
    as_access.get("/_matrix/client/v3/account/whoami").await.assert_error(401, "M_UNKNOWN_TOKEN");
    bob.post(&path(&alice.user_id), json!({})).await.assert_error(403, "M_FORBIDDEN");
}
