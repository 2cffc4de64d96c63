//! Presence.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser};
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

/// The presence of `user` in a sync's `presence` section.
fn presence_in(sync: &Value, user: &str) -> Option<Value> {
    sync["presence"]["events"].as_array()?.iter().find(|e| e["sender"] == user).map(|e| e["content"].clone())
}

/// Two users sharing a room, and bob's sync token.
async fn room_mates(server: &TestServer) -> (TestUser, TestUser, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice).await;
    join(&bob, &room).await;
    let since = bob.sync("timeout=0&set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    (alice, bob, since)
}

/// `/sync` sets presence as `set_presence` says (default online, `offline`: no change), room
/// mates see it in their syncs, and a user whose syncs stop goes offline.
#[tokio::test]
async fn sync_sets_presence_until_the_syncs_stop() {
    let server = TestServer::start_with(|c| c.presence.offline_after = plexus::config::Lifetime(1_000)).await;
    let (alice, bob, since) = room_mates(&server).await;
    alice.get(&format!("{C}/sync?set_presence=away")).await.assert_error(400, "M_INVALID_PARAM");

    alice.sync("timeout=0").await;
    // Syncing on changes nothing: no write, no stream position taken.
    let db = database(&server).await;
    let before = plexus::storage::current_stream_pos(&db).await.unwrap();
    for _ in 0..10 {
        alice.sync("timeout=0").await;
    }
    assert_eq!(plexus::storage::current_stream_pos(&db).await.unwrap(), before);
    let sync = bob.sync(&format!("timeout=5000&set_presence=offline&since={since}")).await;
    let seen = presence_in(&sync, &alice.user_id).unwrap_or_else(|| panic!("{sync}"));
    assert_eq!((seen["presence"].clone(), seen["currently_active"].clone()), (json!("online"), json!(true)));
    assert!(seen["last_active_ago"].as_i64().unwrap() < 5_000, "{seen}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    alice.sync("timeout=0&set_presence=unavailable").await;
    let sync = bob.sync(&format!("timeout=5000&set_presence=offline&since={since}")).await;
    assert_eq!(presence_in(&sync, &alice.user_id).unwrap()["presence"], json!("unavailable"), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    // `offline` leaves presence as it is; bob's own syncs with it never made him online.
    alice.sync("timeout=0&set_presence=offline").await;
    let path = format!("{C}/presence/{}/status", enc(&alice.user_id));
    assert_eq!(bob.get(&path).await.ok()["presence"], json!("unavailable"));
    let bob_path = format!("{C}/presence/{}/status", enc(&bob.user_id));
    assert_eq!(alice.get(&bob_path).await.ok()["presence"], json!("offline"));

    // Syncing on (a long-poll longer than the timeout, then more): still there.
    let alice_since = alice.sync("timeout=0&set_presence=unavailable").await["next_batch"].clone();
    let alice_since = alice_since.as_str().unwrap();
    alice.sync(&format!("timeout=1500&set_presence=unavailable&since={alice_since}")).await;
    alice.sync("timeout=0&set_presence=unavailable").await;
    assert_eq!(bob.get(&path).await.ok()["presence"], json!("unavailable"));
    // The syncs stop: offline about a second later, woken into bob's long-poll.
    let stopped = Instant::now();
    let sync = bob.sync(&format!("timeout=10000&set_presence=offline&since={since}")).await;
    assert_eq!(presence_in(&sync, &alice.user_id).unwrap()["presence"], json!("offline"), "{sync}");
    assert!(stopped.elapsed() >= Duration::from_millis(800), "offline after {:?}", stopped.elapsed());
}

/// Sliding sync (MSC4186) sets presence as `/sync` does: its `set_presence` defaults to
/// online, and a bad value is refused.
#[tokio::test]
async fn sliding_sync_sets_presence() {
    let server = TestServer::start().await;
    let (alice, bob, since) = room_mates(&server).await;
    let sliding = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";
    let body = json!({ "lists": {}, "room_subscriptions": {}, "extensions": {} });
    alice.post(&format!("{sliding}?set_presence=away"), body.clone()).await.assert_error(400, "M_INVALID_PARAM");
    alice.post(&format!("{sliding}?set_presence=unavailable"), body.clone()).await.ok();
    let sync = bob.sync(&format!("timeout=5000&set_presence=offline&since={since}")).await;
    assert_eq!(presence_in(&sync, &alice.user_id).unwrap()["presence"], json!("unavailable"), "{sync}");
    let since = sync["next_batch"].as_str().unwrap().to_owned();
    alice.post(sliding, body).await.ok();
    let sync = bob.sync(&format!("timeout=5000&set_presence=offline&since={since}")).await;
    assert_eq!(presence_in(&sync, &alice.user_id).unwrap()["presence"], json!("online"), "{sync}");
}

/// An online user without activity becomes unavailable after `idle_after`.
#[tokio::test]
async fn online_without_activity_goes_idle() {
    let server = TestServer::start_with(|c| c.presence.idle_after = plexus::config::Lifetime(1_000)).await;
    let (alice, bob, since) = room_mates(&server).await;
    alice.put(&format!("{C}/presence/{}/status", enc(&alice.user_id)), json!({ "presence": "online" })).await.ok();
    let mut since = since;
    let mut states = Vec::new();
    while states.last() != Some(&json!("unavailable")) {
        let sync = bob.sync(&format!("timeout=10000&set_presence=offline&since={since}")).await;
        since = sync["next_batch"].as_str().unwrap().to_owned();
        states.extend(presence_in(&sync, &alice.user_id).map(|p| p["presence"].clone()));
        assert!(states.len() < 3, "{states:?}");
    }
    assert_eq!(states, vec![json!("online"), json!("unavailable")]);
}

/// With presence off, neither syncs nor `PUT /presence` change anything, and none is shown.
#[tokio::test]
async fn presence_can_be_turned_off() {
    let server = TestServer::start_with(|c| c.presence.enabled = false).await;
    let (alice, bob, since) = room_mates(&server).await;
    alice.sync("timeout=0").await;
    let path = format!("{C}/presence/{}/status", enc(&alice.user_id));
    alice.put(&path, json!({ "presence": "online", "status_msg": "here" })).await.ok();
    assert_eq!(bob.get(&path).await.ok(), json!({ "presence": "offline" }));
    let sync = bob.sync(&format!("timeout=0&since={since}")).await;
    assert_eq!(sync["presence"]["events"], json!([]), "{sync}");
}
