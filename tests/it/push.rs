//! Push: default rules, rule CRUD with before/after, unread counts in /sync (notifications,
//! highlights, receipts clearing them), /notifications.

use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc};

const PR: &str = "/_matrix/client/v3/pushrules";

fn ids(list: &Value) -> Vec<&str> {
    list.as_array().unwrap().iter().map(|r| r["rule_id"].as_str().unwrap()).collect()
}

#[tokio::test]
async fn default_rules_are_listed_and_server_defaults_refuse_deletion() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let all = alice.get(&format!("{PR}/")).await.ok();
    let global = &all["global"];
    let overrides = ids(&global["override"]);
    for id in [".m.rule.master", ".m.rule.suppress_notices", ".m.rule.is_user_mention", ".m.rule.is_room_mention"] {
        assert!(overrides.contains(&id), "{id} missing from {overrides:?}");
    }
    assert_eq!(overrides[0], ".m.rule.master");
    let underrides = ids(&global["underride"]);
    for id in [".m.rule.encrypted_room_one_to_one", ".m.rule.room_one_to_one", ".m.rule.message"] {
        assert!(underrides.contains(&id), "{id} missing from {underrides:?}");
    }
    assert!(ids(&global["content"]).is_empty() || global["content"].is_array());
    assert_eq!(global["room"], json!([]));
    assert_eq!(alice.get(&format!("{PR}/global/")).await.ok(), *global);
    assert_eq!(
        alice.get(&format!("{PR}/global/override/.m.rule.master/enabled")).await.ok(),
        json!({"enabled": false})
    );
    let message = alice.get(&format!("{PR}/global/underride/.m.rule.message")).await.ok();
    assert_eq!(message["default"], true);
    assert!(message["actions"].as_array().unwrap().contains(&json!("notify")));

    // Published as account data for clients that read it from /sync.
    let sync = alice.sync("timeout=0").await;
    let events = sync["account_data"]["events"].as_array().unwrap();
    let push_rules = events.iter().find(|e| e["type"] == "m.push_rules").expect("m.push_rules in account data");
    assert_eq!(push_rules["content"]["global"], *global);

    alice.delete(&format!("{PR}/global/override/.m.rule.master"), json!({})).await.assert_error(400, "M_INVALID_PARAM");
    alice
        .put(&format!("{PR}/global/override/.mine"), json!({"actions": [], "conditions": []}))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    alice.get(&format!("{PR}/global/override/nope")).await.assert_error(404, "M_NOT_FOUND");
    alice.delete(&format!("{PR}/global/override/nope"), json!({})).await.assert_error(404, "M_NOT_FOUND");
    alice.get(&format!("{PR}/global/sideways/x")).await.assert_error(400, "M_INVALID_PARAM");
    // Server-default rules may still be switched on and off.
    alice.put(&format!("{PR}/global/override/.m.rule.master/enabled"), json!({"enabled": true})).await.ok();
    assert_eq!(alice.get(&format!("{PR}/global/override/.m.rule.master/enabled")).await.ok(), json!({"enabled": true}));
}

#[tokio::test]
async fn custom_rules_are_placed_with_before_and_after_and_deleted() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let content = |id: &str, pattern: &str| {
        (format!("{PR}/global/content/{id}"), json!({"actions": ["notify"], "pattern": pattern}))
    };
    let (path, body) = content("a", "apple");
    alice.put(&path, body).await.ok();
    let (path, body) = content("c", "cherry");
    alice.put(&path, body).await.ok();
    // New rules go first; `after` and `before` place them relative to user rules.
    let (path, body) = content("b", "banana");
    alice.put(&format!("{path}?after=c"), body).await.ok();
    let (path, body) = content("z", "zest");
    alice.put(&format!("{path}?before=c"), body).await.ok();
    let listed = alice.get(&format!("{PR}/global/")).await.ok();
    let order: Vec<&str> = ids(&listed["content"]).into_iter().filter(|id| !id.starts_with('.')).collect();
    assert_eq!(order, ["z", "c", "b", "a"]);

    let rule = alice.get(&format!("{PR}/global/content/b")).await.ok();
    assert_eq!(
        (rule["pattern"].clone(), rule["actions"].clone(), rule["default"].clone(), rule["enabled"].clone()),
        (json!("banana"), json!(["notify"]), json!(false), json!(true))
    );
    let (path, body) = content("d", "date");
    alice.put(&format!("{path}?before=missing"), body).await.assert_error(400, "M_UNKNOWN");
    let (path, body) = content("d", "date");
    alice.put(&format!("{path}?after=.m.rule.contains_user_name"), body).await.assert_error(400, "M_INVALID_PARAM");

    alice
        .put(&format!("{PR}/global/content/b/actions"), json!({"actions": ["notify", {"set_tweak": "highlight"}]}))
        .await
        .ok();
    assert_eq!(
        alice.get(&format!("{PR}/global/content/b/actions")).await.ok(),
        json!({"actions": ["notify", {"set_tweak": "highlight"}]})
    );
    alice.put(&format!("{PR}/global/content/b/enabled"), json!({"enabled": false})).await.ok();
    assert_eq!(alice.get(&format!("{PR}/global/content/b/enabled")).await.ok(), json!({"enabled": false}));
    alice
        .put(&format!("{PR}/global/content/b/enabled"), json!({"enabled": "yes"}))
        .await
        .assert_error(400, "M_BAD_JSON");
    alice
        .put(&format!("{PR}/global/content/nope/actions"), json!({"actions": []}))
        .await
        .assert_error(404, "M_NOT_FOUND");
    alice
        .put(&format!("{PR}/global/content/e"), json!({"actions": ["notify"]}))
        .await
        .assert_error(400, "M_MISSING_PARAM");
    alice
        .put(&format!("{PR}/global/room/not-a-room"), json!({"actions": []}))
        .await
        .assert_error(400, "M_INVALID_PARAM");

    alice.delete(&format!("{PR}/global/content/b"), json!({})).await.ok();
    alice.get(&format!("{PR}/global/content/b")).await.assert_error(404, "M_NOT_FOUND");
    let listed = alice.get(&format!("{PR}/")).await.ok();
    let order: Vec<&str> = ids(&listed["global"]["content"]).into_iter().filter(|id| !id.starts_with('.')).collect();
    assert_eq!(order, ["z", "c", "a"]);
}

async fn counts(user: &TestUser, room: &str) -> (u64, u64) {
    let body = user.sync("timeout=0").await;
    let unread = &body["rooms"]["join"][room]["unread_notifications"];
    (unread["notification_count"].as_u64().unwrap(), unread["highlight_count"].as_u64().unwrap())
}

/// Alice and Bob (and Carol) in a public room they joined uninvited (an invite would notify).
async fn shared_room(server: &TestServer) -> (TestUser, TestUser, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await.ok();
    carol.join(&room).await.ok();
    (alice, bob, room)
}

/// Sends a read receipt of the given type.
async fn read_up_to(user: &TestUser, room: &str, event_id: &str, receipt_type: &str) {
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/{receipt_type}/{}", enc(room), enc(event_id));
    user.post(&path, json!({})).await.ok();
}

#[tokio::test]
async fn messages_count_mentions_highlight_and_receipts_clear() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    assert_eq!(counts(&bob, &room).await, (0, 0));
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(alice.send_text(&room, &format!("hello {i}")).await);
    }
    assert_eq!(counts(&bob, &room).await, (3, 0));
    // The sender's own messages never count for them.
    assert_eq!(counts(&alice, &room).await, (0, 0));

    let txn_path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention1", enc(&room));
    let mention = alice
        .put(&txn_path, json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}))
        .await
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(counts(&bob, &room).await, (4, 1));

    let listed = bob.get("/_matrix/client/v3/notifications").await.ok();
    let notes = listed["notifications"].as_array().unwrap();
    assert_eq!(notes.len(), 4);
    assert_eq!(notes[0]["event"]["event_id"], mention.as_str());
    assert_eq!(notes[0]["room_id"], room.as_str());
    assert_eq!(notes[0]["read"], false);
    assert!(notes[0]["ts"].is_i64());
    assert!(notes[0]["actions"].as_array().unwrap().contains(&json!({"set_tweak": "highlight"})));
    let highlights = bob.get("/_matrix/client/v3/notifications?only=highlight").await.ok();
    assert_eq!(highlights["notifications"].as_array().unwrap().len(), 1);
    let page = bob.get("/_matrix/client/v3/notifications?limit=3").await.ok();
    assert_eq!(page["notifications"].as_array().unwrap().len(), 3);
    let next = page["next_token"].as_str().unwrap();
    let rest = bob.get(&format!("/_matrix/client/v3/notifications?from={next}")).await.ok();
    assert_eq!(rest["notifications"].as_array().unwrap().len(), 1);
    assert_eq!(rest["notifications"][0]["event"]["event_id"], sent[0].as_str());
    bob.get("/_matrix/client/v3/notifications?from=later").await.assert_error(400, "M_INVALID_PARAM");

    // A receipt on the second message leaves what came after it.
    read_up_to(&bob, &room, &sent[1], "m.read").await;
    assert_eq!(counts(&bob, &room).await, (2, 1));
    read_up_to(&bob, &room, &mention, "m.read.private").await;
    assert_eq!(counts(&bob, &room).await, (0, 0));
    let listed = bob.get("/_matrix/client/v3/notifications").await.ok();
    assert!(listed["notifications"].as_array().unwrap().iter().all(|n| n["read"] == true));
}

#[tokio::test]
async fn muted_room_and_disabled_rules_count_nothing() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    bob.put(&format!("{PR}/global/room/{}", enc(&room)), json!({"actions": []})).await.ok();
    alice.send_text(&room, "muted").await;
    assert_eq!(counts(&bob, &room).await, (0, 0));
    bob.delete(&format!("{PR}/global/room/{}", enc(&room)), json!({})).await.ok();
    alice.send_text(&room, "heard").await;
    assert_eq!(counts(&bob, &room).await, (1, 0));
    // The master rule silences everything.
    bob.put(&format!("{PR}/global/override/.m.rule.master/enabled"), json!({"enabled": true})).await.ok();
    alice.send_text(&room, "silenced").await;
    assert_eq!(counts(&bob, &room).await, (1, 0));
}

/// Sends an event; returns its ID.
async fn send(user: &TestUser, room: &str, txn: &str, content: Value) -> String {
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
    user.put(&path, content).await.ok()["event_id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn thread_counts_are_kept_apart_and_cleared_by_threaded_receipts() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    let root = alice.send_text(&room, "root").await;
    let in_thread = |body: &str| json!({"msgtype": "m.text", "body": body, "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    send(&alice, &room, "t1", in_thread("reply 1")).await;
    let mention = json!({"msgtype": "m.text", "body": "bob?", "m.mentions": {"user_ids": [bob.user_id]},
        "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
    let last_reply = send(&alice, &room, "t2", mention).await;

    // Without the filter flag: everything together.
    assert_eq!(counts(&bob, &room).await, (3, 1));
    let filter = enc(&json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string());
    let per_thread = async || {
        let body = bob.sync(&format!("timeout=0&filter={filter}")).await;
        body["rooms"]["join"][&room].clone()
    };
    let entry = per_thread().await;
    assert_eq!(entry["unread_notifications"], json!({"notification_count": 1, "highlight_count": 0}));
    assert_eq!(entry["unread_thread_notifications"], json!({ &root: {"notification_count": 2, "highlight_count": 1} }));

    // A receipt in the thread clears the thread only.
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&last_reply));
    bob.post(&path, json!({"thread_id": root})).await.ok();
    let entry = per_thread().await;
    assert_eq!(entry["unread_notifications"]["notification_count"], 1);
    assert!(entry.get("unread_thread_notifications").is_none(), "{entry}");
    // A receipt in the main timeline clears it.
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&root));
    bob.post(&path, json!({"thread_id": "main"})).await.ok();
    assert_eq!(counts(&bob, &room).await, (0, 0));
}

#[tokio::test]
async fn keywords_notify_and_can_highlight() {
    let server = TestServer::start().await;
    let (alice, bob, room) = shared_room(&server).await;
    // Silence ordinary messages, as "mentions and keywords only" does in Element.
    bob.put(&format!("{PR}/global/underride/.m.rule.message/actions"), json!({"actions": []})).await.ok();
    alice.send_text(&room, "nothing to see").await;
    assert_eq!(counts(&bob, &room).await, (0, 0));
    let rule = json!({"pattern": "cheese", "actions": ["notify", {"set_tweak": "highlight"}]});
    bob.put(&format!("{PR}/global/content/cheese"), rule).await.ok();
    alice.send_text(&room, "who likes Cheese?").await;
    assert_eq!(counts(&bob, &room).await, (1, 1));
}

#[tokio::test]
async fn counts_of_many_rooms_follow_each_rooms_receipts() {
    let server = TestServer::start().await;
    let (alice, bob, first) = shared_room(&server).await;
    let mut rooms = vec![first];
    for _ in 0..2 {
        let room = alice.create_room(json!({"preset": "public_chat"})).await;
        bob.join(&room).await.ok();
        rooms.push(room);
    }
    let mut sent = Vec::new();
    for room in &rooms {
        let root = alice.send_text(room, "one").await;
        let reply = json!({"msgtype": "m.text", "body": "in thread",
            "m.relates_to": {"rel_type": "m.thread", "event_id": root}});
        let threaded = send(&alice, room, &format!("t-{room}"), reply).await;
        let last = alice.send_text(room, "three").await;
        sent.push((root, threaded, last));
    }
    // Room 0: read (unthreaded) up to the thread reply; room 1: nothing read; room 2: the
    // main timeline read to its end, the thread not.
    read_up_to(&bob, &rooms[0], &sent[0].1, "m.read").await;
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&rooms[2]), enc(&sent[2].2));
    bob.post(&path, json!({"thread_id": "main"})).await.ok();

    let filter = enc(&json!({"room": {"timeline": {"unread_thread_notifications": true}}}).to_string());
    let body = bob.sync(&format!("timeout=0&filter={filter}")).await;
    let entry = |i: usize| body["rooms"]["join"][&rooms[i]].clone();
    let counts = |n: u64| json!({"notification_count": n, "highlight_count": 0});
    assert_eq!(entry(0)["unread_notifications"], counts(1), "{}", entry(0));
    assert!(entry(0).get("unread_thread_notifications").is_none(), "{}", entry(0));
    assert_eq!(entry(1)["unread_notifications"], counts(2), "{}", entry(1));
    assert_eq!(entry(1)["unread_thread_notifications"], json!({ &sent[1].0: counts(1) }));
    assert_eq!(entry(2)["unread_notifications"], counts(0), "{}", entry(2));
    assert_eq!(entry(2)["unread_thread_notifications"], json!({ &sent[2].0: counts(1) }));
    // Without per-thread counts, a room's threads add to its total.
    let body = bob.sync("timeout=0").await;
    let totals: Vec<Value> = rooms.iter().map(|r| body["rooms"]["join"][r]["unread_notifications"].clone()).collect();
    assert_eq!(totals, [counts(1), counts(3), counts(1)]);
}
