//! /sync v2: initial and incremental, gappy timelines, lazy loading, membership
//! transitions and long-poll wake-ups.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc};

fn timeline_ids(body: &Value, section: &str, room: &str) -> Vec<String> {
    body["rooms"][section][room]["timeline"]["events"]
        .as_array()
        .map(|a| a.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn gappy_sync_is_limited_and_prev_batch_paginates_the_gap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let filter = enc(r#"{"room":{"timeline":{"limit":5}}}"#);
    let since = alice.sync(&format!("timeout=0&filter={filter}")).await["next_batch"].as_str().unwrap().to_owned();
    let sent = alice.send_numbered(&room, 12).await;
    let body = alice.sync(&format!("timeout=0&filter={filter}&since={since}")).await;
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(timeline_ids(&body, "join", &room), sent[7..]);
    let prev = timeline["prev_batch"].as_str().unwrap();
    let page = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from={prev}&to={since}&limit=50", enc(&room)))
        .await
        .ok();
    let missed: Vec<String> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    let mut expected = sent[..7].to_vec();
    expected.reverse();
    assert_eq!(missed, expected);
    // Nothing new: the room is absent.
    let next = body["next_batch"].as_str().unwrap();
    let body = alice.sync(&format!("timeout=0&since={next}")).await;
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
}

/// `limited` says events were left out, not that the limit was reached; the same for the
/// `end` of a /messages page that reaches the room's first event.
#[tokio::test]
async fn a_timeline_exactly_as_long_as_the_limit_is_not_limited() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let sent = alice.send_numbered(&room, 3).await;
    for (limit, limited, shown) in [(3, false, &sent[..]), (4, false, &sent[..]), (2, true, &sent[1..])] {
        let filter = enc(&json!({ "room": { "timeline": { "limit": limit } } }).to_string());
        let body = alice.sync(&format!("timeout=0&filter={filter}&since={since}")).await;
        assert_eq!(body["rooms"]["join"][&room]["timeline"]["limited"], limited, "limit {limit}: {body}");
        assert_eq!(timeline_ids(&body, "join", &room), shown, "limit {limit}");
    }
    let messages = |limit: usize| format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit={limit}", enc(&room));
    let all = alice.get(&messages(1000)).await.ok();
    let count = all["chunk"].as_array().unwrap().len();
    assert!(all.get("end").is_none(), "{all}");
    let exact = alice.get(&messages(count)).await.ok();
    assert_eq!(exact["chunk"].as_array().unwrap().len(), count);
    assert!(exact.get("end").is_none(), "a page that holds the room's first event has no end: {exact}");
    let short = alice.get(&messages(count - 1)).await.ok();
    assert!(short["end"].is_string(), "{short}");
}

#[tokio::test]
async fn lazy_loading_sends_each_member_event_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    carol.join(&room).await.ok();
    bob.send_text(&room, "hi").await;
    let filter = enc(r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":1}}}"#);
    let body = alice.sync(&format!("timeout=0&filter={filter}")).await;
    let members = |body: &Value| -> Vec<String> {
        body["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = members(&body);
    assert!(first.contains(&bob.user_id) && !first.contains(&carol.user_id), "{first:?}");
    assert_eq!(body["rooms"]["join"][&room]["summary"]["m.joined_member_count"], 3);
    let since = body["next_batch"].as_str().unwrap().to_owned();
    bob.send_text(&room, "again").await;
    let body = alice.sync(&format!("timeout=0&filter={filter}&since={since}")).await;
    assert!(!members(&body).contains(&bob.user_id), "bob's member event sent twice: {body}");
}

#[tokio::test]
async fn invite_join_leave_rejoin_move_between_sections() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "name": "club" })).await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": bob.user_id }))
        .await
        .ok();
    let body = bob.sync(&format!("timeout=5000&since={since}")).await;
    let invite = body["rooms"]["invite"][&room]["invite_state"]["events"].as_array().unwrap().clone();
    assert!(invite.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "club"));
    assert!(invite.iter().any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite"));
    let since = body["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room).await.ok();
    let body = bob.sync(&format!("timeout=5000&since={since}")).await;
    assert!(body["rooms"]["join"].get(&room).is_some() && body["rooms"]["invite"].get(&room).is_none(), "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    let body = bob.sync(&format!("timeout=5000&since={since}")).await;
    let left = &body["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(left.as_array().unwrap().last().unwrap()["content"]["membership"], "leave");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": bob.user_id }))
        .await
        .ok();
    bob.join(&room).await.ok();
    let body = bob.sync(&format!("timeout=0&since={since}")).await;
    assert!(body["rooms"]["join"].get(&room).is_some(), "{body}");
}

#[tokio::test]
async fn long_poll_wakes_within_50ms_of_a_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let body = bob.sync(&format!("timeout=20000&since={since}")).await;
            (Instant::now(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = alice.send_text(&room, "wake up").await;
    let sent_at = Instant::now();
    let (woke_at, body) = waiter.await.unwrap();
    assert_eq!(timeline_ids(&body, "join", &room), vec![event]);
    let latency = woke_at.saturating_duration_since(sent_at);
    assert!(latency < Duration::from_millis(50), "woke after {latency:?}");
}

#[tokio::test]
async fn bad_since_token_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    alice.get("/_matrix/client/v3/sync?since=garbage").await.assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn to_device_messages_are_redelivered_until_acknowledged() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let start = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let body = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "secret": 1 } } } });
    alice.put("/_matrix/client/v3/sendToDevice/m.test/txn1", body).await.ok();
    let events = |b: &Value| b["to_device"]["events"].as_array().cloned().unwrap_or_default();
    let first = bob.sync(&format!("timeout=5000&since={start}")).await;
    assert_eq!(events(&first).len(), 1, "{first}");
    assert_eq!(events(&first)[0]["sender"], json!(alice.user_id));
    assert_eq!(events(&first)[0]["content"], json!({ "secret": 1 }));
    // The same since again: not acknowledged yet, so delivered again.
    let again = bob.sync(&format!("timeout=0&since={start}")).await;
    assert_eq!(events(&again).len(), 1);
    // Syncing from the new token acknowledges it.
    let next = first["next_batch"].as_str().unwrap();
    let after = bob.sync(&format!("timeout=0&since={next}")).await;
    assert!(events(&after).is_empty(), "{after}");
}

/// An initial sync reads transaction IDs, thread summaries and unread counts for all rooms
/// at once: each must still land on its own room and event.
#[tokio::test]
async fn initial_sync_of_several_rooms_keeps_each_rooms_threads_and_counts() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        let room = alice.create_room(json!({ "preset": "public_chat" })).await;
        bob.join(&room).await.ok();
        // Room i: a root by bob with i + 1 thread replies by alice, then i + 1 more messages by
        // bob: i + 2 notify alice.
        let root = bob.send_text(&room, &format!("root {i}")).await;
        let mut last_reply = String::new();
        for j in 0..=i {
            let reply = json!({ "msgtype": "m.text", "body": format!("reply {j}"),
                                "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
            let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/r{i}-{j}", enc(&room));
            last_reply = alice.put(&path, reply).await.ok()["event_id"].as_str().unwrap().to_owned();
        }
        for _ in 0..=i {
            bob.send_text(&room, "unread").await;
        }
        rooms.push((room, root, last_reply));
    }
    let body = alice.sync("timeout=0").await;
    for (i, (room, root, last_reply)) in rooms.iter().enumerate() {
        let entry = &body["rooms"]["join"][room];
        let events = entry["timeline"]["events"].as_array().unwrap();
        let root_event = events.iter().find(|e| e["event_id"] == json!(root)).expect("root in the timeline");
        let thread = &root_event["unsigned"]["m.relations"]["m.thread"];
        assert_eq!(thread["count"], json!(i + 1), "{root_event}");
        assert_eq!(thread["latest_event"]["event_id"], json!(last_reply));
        assert_eq!(thread["current_user_participated"], json!(true));
        // The replies come from this device: their transaction IDs are shown, bob's are not.
        let reply = events.iter().find(|e| e["event_id"] == json!(last_reply)).expect("reply in the timeline");
        assert_eq!(reply["unsigned"]["transaction_id"], json!(format!("r{i}-{i}")));
        assert!(root_event["unsigned"].get("transaction_id").is_none());
        assert_eq!(entry["unread_notifications"]["notification_count"], json!(i + 2), "{entry}");
    }
    // Bob sees the same thread summaries without alice's transaction IDs.
    let body = bob.sync("timeout=0").await;
    for (i, (room, root, _)) in rooms.iter().enumerate() {
        let events = body["rooms"]["join"][room]["timeline"]["events"].as_array().unwrap();
        let root_event = events.iter().find(|e| e["event_id"] == json!(root)).unwrap();
        assert_eq!(root_event["unsigned"]["m.relations"]["m.thread"]["count"], json!(i + 1));
        assert!(
            events.iter().all(|e| e["unsigned"].get("transaction_id").is_none() || e["sender"] == json!(bob.user_id))
        );
    }
}

/// A long-poll from the current token computes nothing until woken: every kind of news
/// must still wake it and be in its answer.
#[tokio::test]
async fn long_poll_from_the_current_token_gets_each_kind_of_news() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let mut since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    // Nothing new: the long-poll runs to its timeout and answers with the same position.
    let started = Instant::now();
    let idle = bob.sync(&format!("timeout=300&since={since}")).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(idle["next_batch"], json!(since));
    assert!(idle["rooms"]["join"].as_object().unwrap().is_empty(), "{idle}");

    let other = alice.create_room(json!({})).await;

    let waiter = long_poll(&bob, &since);
    let path = format!("/_matrix/client/v3/user/{}/account_data/m.test", enc(&bob.user_id));
    bob.put(&path, json!({ "n": 1 })).await.ok();
    since = until_arrived(&bob, waiter, |b| b["account_data"]["events"][0]["type"] == "m.test").await;

    let waiter = long_poll(&bob, &since);
    let body = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "k": 1 } } } });
    alice.put("/_matrix/client/v3/sendToDevice/m.test/news1", body).await.ok();
    since = until_arrived(&bob, waiter, |b| b["to_device"]["events"][0]["content"] == json!({ "k": 1 })).await;

    let waiter = long_poll(&bob, &since);
    let path = format!("/_matrix/client/v3/rooms/{}/invite", enc(&other));
    alice.post(&path, json!({ "user_id": bob.user_id })).await.ok();
    since = until_arrived(&bob, waiter, |b| b["rooms"]["invite"].get(&other).is_some()).await;

    let event = alice.send_text(&room, "read me").await;
    since = until_arrived(&bob, long_poll(&bob, &since), |b| !timeline_ids(b, "join", &room).is_empty()).await;
    let waiter = long_poll(&bob, &since);
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event));
    alice.post(&path, json!({})).await.ok();
    until_arrived(&bob, waiter, |b| b["rooms"]["join"][&room]["ephemeral"]["events"][0]["type"] == "m.receipt").await;
}

/// A long-poll of `user` from `since`, running in the background.
fn long_poll(user: &TestUser, since: &str) -> tokio::task::JoinHandle<Value> {
    let (user, since) = (user.clone(), since.to_owned());
    tokio::spawn(async move { user.sync(&format!("timeout=10000&since={since}")).await })
}

/// Follows the long-poll's answers (at most three) until one satisfies `arrived`; returns
/// its `next_batch`.
async fn until_arrived(
    user: &TestUser,
    waiter: tokio::task::JoinHandle<Value>,
    arrived: impl Fn(&Value) -> bool,
) -> String {
    let mut body = waiter.await.unwrap();
    for _ in 0..3 {
        let next = body["next_batch"].as_str().unwrap().to_owned();
        if arrived(&body) {
            return next;
        }
        body = user.sync(&format!("timeout=10000&since={next}")).await;
    }
    panic!("never arrived; last answer {body}");
}

/// A window of nothing but messages appended by this process is answered from memory; with
/// any other position in it (here the state group of a topic change elsewhere) from the
/// database. Both must say the same about the room.
#[tokio::test]
async fn a_window_read_from_memory_answers_as_the_database_does() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let elsewhere = alice.create_room(json!({})).await;
    bob.join(&room).await.ok();
    let filter = enc(
        r#"{"room":{"state":{"lazy_load_members":true,"include_redundant_members":true},"timeline":{"limit":10}}}"#,
    );
    // Bob's push rules are stored (as account data) when a first message concerns him.
    alice.send_text(&room, "warm-up").await;
    let next = |b: &Value| b["next_batch"].as_str().unwrap().to_owned();
    let before_gap = next(&bob.sync(&format!("timeout=0&filter={filter}")).await);
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&elsewhere));
    alice.put(&path, json!({ "topic": "a gap" })).await.ok();
    let after_gap = next(&bob.sync(&format!("timeout=0&filter={filter}&since={before_gap}")).await);

    let root = alice.send_text(&room, "one").await;
    let waiter = {
        let bob = bob.clone();
        let (since, filter) = (after_gap.clone(), filter.clone());
        tokio::spawn(async move { bob.sync(&format!("timeout=10000&filter={filter}&since={since}")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let reply =
        json!({ "msgtype": "m.text", "body": "two", "m.relates_to": { "rel_type": "m.thread", "event_id": root } });
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/thread-reply-1", enc(&room));
    let reply = alice.put(&path, reply).await.ok()["event_id"].as_str().unwrap().to_owned();
    // Both messages are in one answer (the long-poll may have woken at the first one).
    let mut from_memory = waiter.await.unwrap();
    if timeline_ids(&from_memory, "join", &room).len() < 2 {
        from_memory = bob.sync(&format!("timeout=0&filter={filter}&since={after_gap}")).await;
    }
    let from_db = bob.sync(&format!("timeout=0&filter={filter}&since={before_gap}")).await;
    assert_eq!(from_memory["next_batch"], from_db["next_batch"]);
    let without_age = |b: &Value| {
        let mut entry = b["rooms"]["join"][&room].clone();
        for section in ["timeline", "state"] {
            for event in entry[section]["events"].as_array_mut().unwrap() {
                event["unsigned"].as_object_mut().unwrap().remove("age");
                if let Some(latest) = event["unsigned"].pointer_mut("/m.relations/m.thread/latest_event/unsigned") {
                    latest.as_object_mut().unwrap().remove("age");
                }
            }
        }
        entry
    };
    let entry = without_age(&from_memory);
    assert_eq!(timeline_ids(&from_memory, "join", &room), vec![root.clone(), reply.clone()]);
    assert_eq!(entry["timeline"]["events"][0]["unsigned"]["m.relations"]["m.thread"]["count"], json!(1), "{entry}");
    assert_eq!(entry["state"]["events"][0]["state_key"], json!(alice.user_id), "{entry}");
    assert_eq!(entry["unread_notifications"]["notification_count"], json!(3), "{entry}");
    assert_eq!(entry, without_age(&from_db));
}

/// A purge keeps local events out of the timeline: a window over them, which memory would
/// otherwise answer, must not show them.
#[tokio::test]
async fn a_purge_keeps_purged_events_out_of_windows_read_from_memory() {
    let server = TestServer::start().await;
    let admin = server.register("root").await;
    let mut tx = server.state.db.begin().await.unwrap();
    plexus::storage::users::set_admin(&mut tx, &admin.user_id, true).await.unwrap();
    tx.commit().await.unwrap();
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    alice.send_text(&room, "warm-up").await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    alice.send_text(&room, "purged").await;
    let kept = alice.send_text(&room, "kept").await;
    let path = format!("/_synapse/admin/v1/purge_history/{}", enc(&room));
    let id =
        admin.post(&path, json!({ "purge_up_to_event_id": kept })).await.ok()["purge_id"].as_str().unwrap().to_owned();
    let status = format!("/_synapse/admin/v1/purge_history_status/{id}");
    crate::harness::wait_for("the purge", async || admin.get(&status).await.ok()["status"] == "complete").await;
    let body = bob.sync(&format!("timeout=0&since={since}")).await;
    assert_eq!(timeline_ids(&body, "join", &room), vec![kept], "{body}");
}

/// A window that holds only this process's appends is read from memory; what takes no stream
/// position (typing) and what asks for every room (`full_state`) must still come through.
#[tokio::test]
async fn typing_and_full_state_come_through_after_a_window_read_from_memory() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    alice.send_text(&room, "warm-up").await;
    let next = |b: &Value| b["next_batch"].as_str().unwrap().to_owned();
    let since = next(&bob.sync("timeout=0").await);
    alice.send_text(&room, "hello").await;
    let since = next(&bob.sync(&format!("timeout=0&since={since}")).await);

    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    alice.put(&path, json!({ "typing": true, "timeout": 30000 })).await.ok();
    let body = bob.sync(&format!("timeout=0&since={since}")).await;
    let ephemeral = &body["rooms"]["join"][&room]["ephemeral"]["events"];
    let typing = ephemeral.as_array().and_then(|e| e.iter().find(|e| e["type"] == "m.typing"));
    assert_eq!(typing.map(|t| t["content"]["user_ids"].clone()), Some(json!([alice.user_id])), "{body}");

    let body = bob.sync(&format!("timeout=0&full_state=true&since={since}")).await;
    let state = body["rooms"]["join"][&room]["state"]["events"].as_array().cloned().unwrap_or_default();
    let kinds: BTreeSet<&str> = state.iter().filter_map(|e| e["type"].as_str()).collect();
    for kind in ["m.room.create", "m.room.power_levels", "m.room.join_rules", "m.room.member"] {
        assert!(kinds.contains(kind), "{kind} missing from full state: {body}");
    }
    // The timeline still starts at the token: nothing was sent since.
    assert_eq!(body["rooms"]["join"][&room]["timeline"]["events"], json!([]), "{body}");
}

/// Unread counts of a window read from memory are the device's last answered counts plus
/// the window's notifications: the same as the database counts, for the main timeline, a
/// thread and highlights; a read receipt (a window the database answers) resets them.
#[tokio::test]
async fn unread_counts_added_from_memory_match_the_database() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let filter = enc(r#"{"room":{"timeline":{"limit":10,"unread_thread_notifications":true}}}"#);
    let counts = |body: &Value| {
        let entry = &body["rooms"]["join"][&room];
        (entry["unread_notifications"].clone(), entry["unread_thread_notifications"].clone())
    };
    let root = alice.send_text(&room, "root").await;
    // A full sync: the room's counts, read from the database, are kept for this device.
    let full = bob.sync(&format!("timeout=0&filter={filter}")).await;
    assert_eq!(counts(&full).0["notification_count"], json!(1), "{full}");
    let mut since = full["next_batch"].as_str().unwrap().to_owned();
    let mention = |n: u32| json!({ "msgtype": "m.text", "body": format!("bob {n}"), "m.mentions": { "user_ids": [bob.user_id] } });
    let reply = |n: u32| {
        json!({ "msgtype": "m.text", "body": format!("reply {n}"),
                "m.relates_to": { "rel_type": "m.thread", "event_id": root } })
    };
    for round in 0..2 {
        // Woken by the first of them, then following until all three arrived: each answer
        // adds its window to the counts of the one before.
        let waiter = {
            let (bob, since, filter) = (bob.clone(), since.clone(), filter.clone());
            tokio::spawn(async move { bob.sync(&format!("timeout=10000&filter={filter}&since={since}")).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        alice.send_text(&room, "plain").await;
        let send = |kind: &str, body: Value| {
            let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{kind}-{round}", enc(&room));
            let alice = alice.clone();
            async move { alice.put(&path, body).await.ok()["event_id"].as_str().unwrap().to_owned() }
        };
        send("mention", mention(round)).await;
        let last = send("reply", reply(round)).await;
        let mut body = waiter.await.unwrap();
        while !timeline_ids(&body, "join", &room).contains(&last) {
            since = body["next_batch"].as_str().unwrap().to_owned();
            body = bob.sync(&format!("timeout=10000&filter={filter}&since={since}")).await;
        }
        since = body["next_batch"].as_str().unwrap().to_owned();
        let from_db = bob.sync(&format!("timeout=0&filter={filter}")).await;
        assert_eq!(counts(&body), counts(&from_db), "round {round}: {body}");
        let (main, threads) = counts(&body);
        let n = round as i64 + 1;
        assert_eq!(main, json!({ "notification_count": 1 + 2 * n, "highlight_count": n }), "{body}");
        assert_eq!(threads[&root], json!({ "notification_count": n, "highlight_count": 0 }), "{body}");
    }
    // Bob reads everything: the window holds a receipt, and the counts are read again.
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&root));
    bob.post(&path, json!({ "thread_id": "main" })).await.ok();
    let latest = alice.send_text(&room, "after the receipt").await;
    let path = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&latest));
    bob.post(&path, json!({})).await.ok();
    let body = bob.sync(&format!("timeout=0&filter={filter}&since={since}")).await;
    assert_eq!(counts(&body).0, json!({ "notification_count": 0, "highlight_count": 0 }), "{body}");
}

#[tokio::test]
async fn an_uploaded_filter_applies_on_every_sync_that_names_it() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({})).await;
    let filter = json!({ "room": { "timeline": { "limit": 2, "types": ["m.room.message"] } } });
    let uploaded = alice.post(&format!("/_matrix/client/v3/user/{}/filter", enc(&alice.user_id)), filter).await.ok();
    let id = uploaded["filter_id"].as_str().expect("filter_id").to_owned();
    let mut sent = Vec::new();
    for i in 0..3 {
        sent.push(alice.send_text(&room, &format!("m{i}")).await);
        let path = format!("/_matrix/client/v3/rooms/{}/send/org.example.other/t{i}", enc(&room));
        alice.put(&path, json!({})).await.ok();
    }
    // The second sync names the filter again (kept parsed after the first): the same answer.
    for _ in 0..2 {
        let body = alice.sync(&format!("timeout=0&filter={id}")).await;
        assert_eq!(timeline_ids(&body, "join", &room), sent[1..], "{body}");
        assert_eq!(body["rooms"]["join"][&room]["timeline"]["limited"], true);
    }
    // Filter IDs are per user: Bob has none with this ID.
    let unknown = bob.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={id}")).await;
    unknown.assert_error(400, "M_INVALID_PARAM");
}

/// A long-poll that comes back with the token its last answer gave skips reading the stream
/// while the user had no wake-up since that answer: news committed in between must still
/// be answered at once, whether the user's waiters were dropped meanwhile (nobody was
/// waiting when the news came) or kept (another of the user's long-polls was waiting).
#[tokio::test]
async fn a_long_poll_back_with_its_last_token_answers_at_once_with_news_from_between() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let next = |body: &Value| body["next_batch"].as_str().unwrap().to_owned();
    let timed = |since: String| {
        let bob = bob.clone();
        async move {
            let started = Instant::now();
            let body = bob.sync(&format!("timeout=10000&since={since}")).await;
            (started.elapsed(), body)
        }
    };

    // Nobody waits for Bob when Alice sends.
    let since = next(&bob.sync("timeout=0").await);
    let first = alice.send_text(&room, "while nobody waits").await;
    let (took, body) = timed(since).await;
    assert_eq!(timeline_ids(&body, "join", &room), vec![first]);
    assert!(took < Duration::from_secs(2), "answered after {took:?}");

    // A long-poll of Bob that sees no room is waiting when Alice sends.
    let since = next(&body);
    let no_rooms = enc(r#"{"room":{"rooms":[]}}"#);
    let waiting = {
        let (bob, since) = (bob.clone(), since.clone());
        tokio::spawn(async move { bob.sync(&format!("timeout=5000&filter={no_rooms}&since={since}")).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let second = alice.send_text(&room, "while another long-poll waits").await;
    let (took, body) = timed(since).await;
    assert_eq!(timeline_ids(&body, "join", &room), vec![second]);
    assert!(took < Duration::from_secs(2), "answered after {took:?}");
    let idle = waiting.await.unwrap();
    assert!(idle["rooms"]["join"].as_object().unwrap().is_empty(), "{idle}");
}
