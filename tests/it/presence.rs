//! Presence.

use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::{C, database, enc, join, public_room};

#[tokio::test]
async fn presence_set_get_and_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let path = |user: &str| format!("{C}/presence/{}/status", enc(user));

    assert_eq!(alice.get(&path(&alice.user_id)).await.ok(), json!({ "presence": "offline" }));
    let db = database(&server).await;
    let start = plexus::storage::current_stream_pos(&db).await.unwrap();
    alice.put(&path(&alice.user_id), json!({ "presence": "online", "status_msg": "here" })).await.ok();
    let me = alice.get(&path(&alice.user_id)).await.ok();
    assert_eq!((me["presence"].clone(), me["status_msg"].clone()), (json!("online"), json!("here")));
    assert_eq!(me["currently_active"], json!(true));
    assert!(me["last_active_ago"].as_i64().unwrap() < 60_000);

    // Others see it once they share a room.
    bob.get(&path(&alice.user_id)).await.assert_error(403, "M_FORBIDDEN");
    let room = public_room(&alice).await;
    join(&bob, &room).await;
    assert_eq!(bob.get(&path(&alice.user_id)).await.ok()["status_msg"], json!("here"));

    // Without status_msg the message goes; unavailable is never currently active.
    alice.put(&path(&alice.user_id), json!({ "presence": "unavailable" })).await.ok();
    let seen = bob.get(&path(&alice.user_id)).await.ok();
    assert_eq!(seen["presence"], json!("unavailable"));
    assert!(seen.get("status_msg").is_none() && seen.get("currently_active").is_none(), "{seen}");

    bob.put(&path(&alice.user_id), json!({ "presence": "online" })).await.assert_error(403, "M_FORBIDDEN");
    alice.put(&path(&alice.user_id), json!({ "presence": "busy" })).await.assert_error(400, "M_INVALID_PARAM");
    alice.put(&path(&alice.user_id), json!({})).await.assert_error(400, "M_BAD_JSON");
    alice.get(&path("nobody")).await.assert_error(400, "M_INVALID_PARAM");

    // The changes /sync reads: the latest of each user, after a position, for the users asked.
    let mid = plexus::storage::current_stream_pos(&db).await.unwrap();
    bob.put(&path(&bob.user_id), json!({ "presence": "online" })).await.ok();
    let users = vec![alice.user_id.clone(), bob.user_id.clone()];
    let changes = plexus::storage::presence::changes(&db, &users, start, i64::MAX).await.unwrap();
    let who: Vec<(&str, &str)> = changes.iter().map(|p| (p.user_id.as_str(), p.state.as_str())).collect();
    assert_eq!(who, vec![(alice.user_id.as_str(), "unavailable"), (bob.user_id.as_str(), "online")]);
    let changes = plexus::storage::presence::changes(&db, &users, mid, i64::MAX).await.unwrap();
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].content(plexus::storage::now_ms())["presence"], json!("online"));
    let only_alice = plexus::storage::presence::changes(&db, &users[..1], mid, i64::MAX).await.unwrap();
    assert!(only_alice.is_empty());
}
