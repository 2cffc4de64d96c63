//! Typing notifications.

use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::{C, enc, join, public_room};

#[tokio::test]
async fn typing_requests() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice).await;
    let path = |user: &str| format!("{C}/rooms/{}/typing/{}", enc(&room), enc(user));

    alice.put(&path(&alice.user_id), json!({ "typing": true, "timeout": 30000 })).await.ok();
    alice.put(&path(&alice.user_id), json!({ "typing": true })).await.ok();
    alice.put(&path(&alice.user_id), json!({ "typing": false })).await.ok();
    // Only one's own typing, only in a joined room, with a well-formed body.
    alice.put(&path(&bob.user_id), json!({ "typing": true, "timeout": 1000 })).await.assert_error(403, "M_FORBIDDEN");
    bob.put(&path(&bob.user_id), json!({ "typing": true, "timeout": 1000 })).await.assert_error(403, "M_FORBIDDEN");
    join(&bob, &room).await;
    bob.put(&path(&bob.user_id), json!({ "typing": true, "timeout": 1000 })).await.ok();
    alice.put(&path(&alice.user_id), json!({ "timeout": 1000 })).await.assert_error(400, "M_BAD_JSON");
    alice.put(&path(&alice.user_id), json!({ "typing": true, "timeout": -5 })).await.assert_error(400, "M_BAD_JSON");
    alice.put(&path("not-a-user"), json!({ "typing": true })).await.assert_error(400, "M_INVALID_PARAM");
    let unknown = format!("{C}/rooms/{}/typing/{}", enc(&format!("!x:{}", server.server_name)), enc(&alice.user_id));
    alice.put(&unknown, json!({ "typing": true })).await.assert_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn leaving_a_room_stops_typing_there() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice).await;
    join(&bob, &room).await;
    let typing_users = |sync: &serde_json::Value| -> Vec<String> {
        let ephemeral = sync["rooms"]["join"][&room]["ephemeral"]["events"].as_array().cloned().unwrap_or_default();
        let typing = ephemeral.iter().find(|e| e["type"] == "m.typing");
        let users = typing.and_then(|t| t["content"]["user_ids"].as_array().cloned()).unwrap_or_default();
        users.iter().filter_map(|u| u.as_str().map(str::to_owned)).collect()
    };
    let path = format!("{C}/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id));
    bob.put(&path, json!({ "typing": true, "timeout": 30000 })).await.ok();
    let first = alice.sync("?timeout=0").await;
    assert_eq!(typing_users(&first), std::slice::from_ref(&bob.user_id));

    bob.post(&format!("{C}/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    let since = first["next_batch"].as_str().unwrap();
    let after = alice.sync(&format!("?timeout=0&since={since}")).await;
    assert_eq!(typing_users(&after), Vec::<String>::new());
    assert!(after["rooms"]["join"][&room]["ephemeral"]["events"].as_array().is_some_and(|e| !e.is_empty()));
}
