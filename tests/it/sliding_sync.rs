//! Simplified sliding sync (MSC4186): lists sorted by activity, incremental updates,
//! long-polling, invites, required_state with $LAZY/$ME and changes, filters,
//! subscriptions, extensions, unknown positions and positions across a restart.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{ServerHandle, TestServer, TestUser, enc};

const SS: &str = "/_matrix/client/unstable/org.matrix.simplified_msc3575/sync";

async fn ss(user: &TestUser, body: Value, pos: Option<&str>, timeout_ms: u64) -> Value {
    let mut path = format!("{SS}?timeout={timeout_ms}");
    if let Some(pos) = pos {
        path.push_str(&format!("&pos={}", enc(pos)));
    }
    user.post(&path, body).await.ok()
}

fn pos(body: &Value) -> String {
    body["pos"].as_str().expect("pos").to_owned()
}

fn room_ids(body: &Value) -> BTreeSet<String> {
    body["rooms"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

fn timeline_bodies(room: &Value) -> Vec<String> {
    room["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["content"]["body"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn state_keys(room: &Value) -> BTreeSet<(String, String)> {
    room["required_state"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].as_str().unwrap().to_owned(), e["state_key"].as_str().unwrap().to_owned()))
        .collect()
}

fn list(ranges: Value, timeline_limit: u64, required_state: Value) -> Value {
    json!({ "lists": { "all": { "ranges": ranges, "timeline_limit": timeline_limit, "required_state": required_state } } })
}

#[tokio::test]
async fn lists_sort_by_activity_and_updates_carry_only_what_changed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mut rooms = Vec::new();
    for i in 0..3 {
        rooms.push(alice.create_room(json!({ "name": format!("room {i}") })).await);
    }
    alice.send_text(&rooms[1], "one").await;
    alice.send_text(&rooms[0], "zero").await;
    // State churn does not bump: room 2 stays last.
    alice
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&rooms[2])), json!({ "topic": "t" }))
        .await
        .ok();

    let req = list(json!([[0, 1]]), 5, json!([["m.room.name", ""]]));
    let body = ss(&alice, req.clone(), None, 0).await;
    assert_eq!(body["lists"]["all"]["count"], 3);
    assert_eq!(room_ids(&body), BTreeSet::from([rooms[0].clone(), rooms[1].clone()]));
    let r0 = &body["rooms"][&rooms[0]];
    assert!(r0["bump_stamp"].as_i64() > body["rooms"][&rooms[1]]["bump_stamp"].as_i64());
    assert_eq!(r0["initial"], true);
    assert_eq!(r0["name"], "room 0");
    assert_eq!(r0["joined_count"], 1);
    assert_eq!(state_keys(r0), BTreeSet::from([("m.room.name".to_owned(), String::new())]));
    assert_eq!(timeline_bodies(r0).last().unwrap(), "zero");
    assert_eq!(r0["num_live"], 0);
    let p = pos(&body);

    // A message in room 2 moves it to the top; only it is sent, with just the new event.
    alice.send_text(&rooms[2], "two").await;
    let body = ss(&alice, req.clone(), Some(&p), 0).await;
    assert_eq!(room_ids(&body), BTreeSet::from([rooms[2].clone()]), "{body}");
    let r2 = &body["rooms"][&rooms[2]];
    assert_eq!(r2["initial"], true, "room 2 was never sent on this connection");
    // Room 0, still in range and unchanged, is not sent again.
    let p = pos(&body);
    alice.send_text(&rooms[2], "two again").await;
    let body = ss(&alice, req.clone(), Some(&p), 0).await;
    let r2 = &body["rooms"][&rooms[2]];
    assert!(r2.get("initial").is_none(), "{r2}");
    assert_eq!(timeline_bodies(r2), vec!["two again"]);
    assert_eq!(r2["num_live"], 1);
    assert_eq!(r2["limited"], false);
    assert_eq!(room_ids(&body).len(), 1);
    // Nothing new: no rooms, and the answer comes at once with timeout 0.
    let body = ss(&alice, req, Some(&pos(&body)), 0).await;
    assert!(room_ids(&body).is_empty(), "{body}");
}

#[tokio::test]
async fn long_poll_waits_and_wakes_on_a_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let req = list(json!([[0, 9]]), 1, json!([]));
    let p = pos(&ss(&alice, req.clone(), None, 0).await);

    let started = Instant::now();
    let body = ss(&alice, req.clone(), Some(&p), 300).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(room_ids(&body).is_empty());
    let p = pos(&body);

    let sender = alice.clone();
    let target = room.clone();
    let send = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        sender.send_text(&target, "wake").await
    });
    let started = Instant::now();
    let body = ss(&alice, req, Some(&p), 20_000).await;
    send.await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(timeline_bodies(&body["rooms"][&room]), vec!["wake"]);
}

#[tokio::test]
async fn invites_show_stripped_state_and_filters_pick_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let dm = bob.create_room(json!({ "name": "for alice", "invite": [alice.user_id], "is_direct": true })).await;
    let encrypted = alice
        .create_room(json!({ "initial_state": [{ "type": "m.room.encryption", "state_key": "", "content": { "algorithm": "m.megolm.v1.aes-sha2" } }] }))
        .await;
    let space = alice.create_room(json!({ "creation_content": { "type": "m.space" } })).await;
    let plain = alice.create_room(json!({})).await;
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.space.child/{}", enc(&space), enc(&plain)),
            json!({ "via": [server.server_name] }),
        )
        .await
        .ok();

    let lists = |filters: Value| json!({ "lists": { "l": { "ranges": [[0, 9]], "timeline_limit": 0, "required_state": [], "filters": filters } } });
    let body = ss(&alice, lists(json!({ "is_invite": true })), None, 0).await;
    assert_eq!(room_ids(&body), BTreeSet::from([dm.clone()]));
    let invite = &body["rooms"][&dm];
    assert_eq!(invite["name"], "for alice");
    assert_eq!(invite["is_dm"], true);
    let stripped = invite["invite_state"].as_array().unwrap();
    assert!(stripped.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == alice.user_id.as_str()));

    let only = |body: &Value| room_ids(body);
    assert_eq!(
        only(&ss(&alice, lists(json!({ "is_encrypted": true })), None, 0).await),
        BTreeSet::from([encrypted.clone()])
    );
    assert_eq!(
        only(&ss(&alice, lists(json!({ "room_types": ["m.space"] })), None, 0).await),
        BTreeSet::from([space.clone()])
    );
    assert_eq!(
        only(&ss(&alice, lists(json!({ "not_room_types": ["m.space"], "is_invite": false })), None, 0).await),
        BTreeSet::from([encrypted.clone(), plain.clone()])
    );
    assert_eq!(only(&ss(&alice, lists(json!({ "spaces": [space] })), None, 0).await), BTreeSet::from([plain.clone()]));
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/account_data/m.direct", enc(&alice.user_id)),
            json!({ "@x:y": [plain] }),
        )
        .await
        .ok();
    assert_eq!(
        only(&ss(&alice, lists(json!({ "is_dm": true })), None, 0).await),
        BTreeSet::from([dm.clone(), plain.clone()])
    );
}

#[tokio::test]
async fn required_state_lazy_members_me_and_config_changes() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    carol.join(&room).await.ok();
    bob.send_text(&room, "from bob").await;

    let lazy = list(json!([[0, 0]]), 1, json!([["m.room.member", "$LAZY"], ["m.room.member", "$ME"]]));
    let body = ss(&alice, lazy.clone(), None, 0).await;
    let members: BTreeSet<String> = state_keys(&body["rooms"][&room]).into_iter().map(|(_, k)| k).collect();
    assert_eq!(members, BTreeSet::from([alice.user_id.clone(), bob.user_id.clone()]));
    assert_eq!(body["rooms"][&room]["joined_count"], 3);
    let p = pos(&body);

    // Carol speaks: her member event comes with her message.
    carol.send_text(&room, "from carol").await;
    let body = ss(&alice, lazy, Some(&p), 0).await;
    let keys = state_keys(&body["rooms"][&room]);
    assert!(keys.contains(&("m.room.member".to_owned(), carol.user_id.clone())), "{keys:?}");
    let p = pos(&body);

    // The client asks for more state: the room is sent again with it, though nothing happened.
    let wider = list(json!([[0, 0]]), 1, json!([["m.room.join_rules", ""], ["m.room.member", "$ME"]]));
    let body = ss(&alice, wider.clone(), Some(&p), 0).await;
    let r = &body["rooms"][&room];
    assert!(r.get("initial").is_none());
    assert_eq!(
        state_keys(r),
        BTreeSet::from([
            ("m.room.join_rules".to_owned(), String::new()),
            ("m.room.member".to_owned(), alice.user_id.clone())
        ])
    );
    // A state change the client asked for arrives in required_state.
    let p = pos(&body);
    alice
        .put(
            &format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules/", enc(&room)),
            json!({ "join_rule": "invite" }),
        )
        .await
        .ok();
    let body = ss(&alice, wider, Some(&p), 0).await;
    let r = &body["rooms"][&room];
    assert_eq!(state_keys(r), BTreeSet::from([("m.room.join_rules".to_owned(), String::new())]));
    assert_eq!(r["required_state"][0]["content"]["join_rule"], "invite");
}

#[tokio::test]
async fn subscriptions_show_rooms_outside_the_ranges() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let old = alice.create_room(json!({ "name": "old" })).await;
    let new = alice.create_room(json!({ "name": "new" })).await;
    let strangers = bob.create_room(json!({})).await;
    let body = json!({
        "lists": { "top": { "ranges": [[0, 0]], "timeline_limit": 0, "required_state": [] } },
        "room_subscriptions": {
            old.clone(): { "timeline_limit": 1, "required_state": [["*", "*"]] },
            strangers.clone(): { "timeline_limit": 1, "required_state": [] },
        },
    });
    let reply = ss(&alice, body, None, 0).await;
    assert_eq!(room_ids(&reply), BTreeSet::from([old.clone(), new.clone()]));
    let keys = state_keys(&reply["rooms"][&old]);
    assert!(keys.contains(&("m.room.create".to_owned(), String::new())));
    assert!(keys.contains(&("m.room.member".to_owned(), alice.user_id.clone())));
    // Unsubscribed (no longer asked for): a new message there is not sent, while the room
    // in range is.
    let p = pos(&reply);
    alice.send_text(&old, "quiet").await;
    alice.send_text(&new, "loud").await;
    let reply = ss(
        &alice,
        json!({ "lists": { "top": { "ranges": [[0, 0]], "timeline_limit": 0, "required_state": [] } } }),
        Some(&p),
        0,
    )
    .await;
    assert_eq!(room_ids(&reply), BTreeSet::from([new.clone()]), "{reply}");
}

#[tokio::test]
async fn extensions_deliver_what_changed() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let event = alice.send_text(&room, "read me").await;
    let ext = json!({
        "to_device": { "enabled": true }, "e2ee": { "enabled": true }, "account_data": { "enabled": true },
        "receipts": { "enabled": true }, "typing": { "enabled": true },
    });
    let mut req = list(json!([[0, 0]]), 1, json!([]));
    req["extensions"] = ext.clone();
    let body = ss(&alice, req.clone(), None, 0).await;
    let next = body["extensions"]["to_device"]["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(body["extensions"]["e2ee"]["device_one_time_keys_count"], json!({ "signed_curve25519": 0 }));
    let p = pos(&body);

    bob.put(
        "/_matrix/client/v3/sendToDevice/m.test/t1",
        json!({ "messages": { alice.user_id.clone(): { alice.device_id.clone(): { "n": 1 } } } }),
    )
    .await
    .ok();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&event)), json!({})).await.ok();
    bob.put(
        &format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&bob.user_id)),
        json!({ "typing": true, "timeout": 30000 }),
    )
    .await
    .ok();
    alice
        .put(
            &format!("/_matrix/client/v3/user/{}/rooms/{}/account_data/m.tag.test", enc(&alice.user_id), enc(&room)),
            json!({ "a": 1 }),
        )
        .await
        .ok();
    // A new room-mate: the client should fetch their devices.
    let carol = server.register("carol").await;
    carol.join(&room).await.ok();

    let mut req2 = req.clone();
    req2["extensions"]["to_device"]["since"] = json!(next);
    let body = ss(&alice, req2.clone(), Some(&p), 0).await;
    let ex = &body["extensions"];
    assert_eq!(ex["to_device"]["events"][0]["content"]["n"], 1, "{ex}");
    assert!(ex["receipts"]["rooms"][&room]["content"][&event]["m.read"].get(&bob.user_id).is_some(), "{ex}");
    assert_eq!(ex["typing"]["rooms"][&room]["content"]["user_ids"], json!([bob.user_id]));
    assert_eq!(ex["account_data"]["rooms"][&room][0]["type"], "m.tag.test");
    assert!(ex["account_data"]["global"].as_array().unwrap().is_empty());
    assert!(
        ex["e2ee"]["device_lists"]["changed"].as_array().unwrap().iter().any(|u| u == carol.user_id.as_str()),
        "{ex}"
    );

    // Acknowledged and unchanged: nothing again.
    let next = ex["to_device"]["next_batch"].as_str().unwrap().to_owned();
    req2["extensions"]["to_device"]["since"] = json!(next);
    let body = ss(&alice, req2, Some(&pos(&body)), 0).await;
    let ex = &body["extensions"];
    assert!(ex["to_device"]["events"].as_array().unwrap().is_empty(), "{ex}");
    assert!(ex["receipts"]["rooms"].as_object().unwrap().is_empty(), "{ex}");
    assert!(ex["typing"]["rooms"].as_object().unwrap().is_empty(), "{ex}");
    assert!(ex["account_data"]["rooms"].as_object().unwrap().is_empty(), "{ex}");

    // An extension scoped to another list covers no room.
    let mut scoped = req.clone();
    scoped["extensions"] = json!({ "receipts": { "enabled": true, "lists": ["other"] } });
    let body = ss(&alice, scoped, None, 0).await;
    assert!(body["extensions"]["receipts"]["rooms"].as_object().unwrap().is_empty());
}

#[tokio::test]
async fn unknown_positions_make_the_client_start_over() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    alice.create_room(json!({})).await;
    let req = list(json!([[0, 0]]), 1, json!([]));
    for bad in ["garbage", "1_2_3", "1_0_999999_0"] {
        alice.post(&format!("{SS}?pos={bad}"), req.clone()).await.assert_error(400, "M_UNKNOWN_POS");
    }
    let old = pos(&ss(&alice, req.clone(), None, 0).await);
    // Starting over (no pos) retires the connection's older positions.
    let fresh = pos(&ss(&alice, req.clone(), None, 0).await);
    alice.post(&format!("{SS}?pos={}", enc(&old)), req.clone()).await.assert_error(400, "M_UNKNOWN_POS");
    ss(&alice, req.clone(), Some(&fresh), 0).await;
    // Connections are separate: another conn_id has its own positions.
    let mut other = req.clone();
    other["conn_id"] = json!("second");
    alice.post(&format!("{SS}?pos={}", enc(&fresh)), other.clone()).await.assert_error(400, "M_UNKNOWN_POS");
    // Bad input is the spec's error, not a 500.
    alice
        .post(SS, json!({ "lists": { "l": { "ranges": [[3, 1]], "timeline_limit": 1 } } }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    alice.post(SS, json!({ "lists": "no" })).await.assert_error(400, "M_BAD_JSON");
}

#[tokio::test]
async fn positions_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_owned();
    let server = TestServer::start_with(|c| {
        if c.database.url.starts_with("sqlite") {
            c.database.url = format!("sqlite://{}/plexus.db", keep.display());
        }
        c.data_dir = keep.clone();
    })
    .await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let req = list(json!([[0, 0]]), 5, json!([]));
    let p = pos(&ss(&alice, req.clone(), None, 0).await);

    let config = server.config.clone();
    server.stop().await;
    let restarted = TestServer::start_with(|c| {
        c.server_name = config.server_name.clone();
        c.database.url = config.database.url.clone();
        c.data_dir = config.data_dir.clone();
    })
    .await;
    let alice = TestUser {
        server: ServerHandle {
            base: restarted.base.clone(),
            client: restarted.client.clone(),
            server_name: config.server_name.clone(),
        },
        ..alice
    };
    alice.send_text(&room, "after restart").await;
    let body = ss(&alice, req, Some(&p), 0).await;
    let r = &body["rooms"][&room];
    assert!(r.get("initial").is_none(), "the connection remembers the room: {r}");
    assert_eq!(timeline_bodies(r), vec!["after restart"]);
}

#[tokio::test]
async fn room_lists_follow_joins_leaves_and_activity_after_the_first_response() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let a = alice.create_room(json!({ "name": "a" })).await;
    let b = alice.create_room(json!({ "name": "b" })).await;
    let req = list(json!([[0, 9]]), 1, json!([["m.room.name", ""]]));
    let body = ss(&alice, req.clone(), None, 0).await;
    assert_eq!(body["lists"]["all"]["count"], 2);
    // Another connection of the user reads the same rooms in between.
    let mut other = req.clone();
    other["conn_id"] = json!("other");
    ss(&alice, other, None, 0).await;

    // A room joined and a room left since the position.
    let c = bob.create_room(json!({ "preset": "public_chat", "name": "c" })).await;
    alice.join(&c).await.ok();
    alice.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&b)), json!({})).await.ok();
    let body = ss(&alice, req.clone(), Some(&pos(&body)), 0).await;
    // The room left shows once, to tell the client.
    assert_eq!(body["lists"]["all"]["count"], 3, "{body}");
    assert_eq!(body["rooms"][&c]["initial"], true, "{body}");
    assert_eq!(body["rooms"][&c]["name"], "c");
    let c_stamp = body["rooms"][&c]["bump_stamp"].as_i64().unwrap();
    let body = ss(&alice, req.clone(), Some(&pos(&body)), 0).await;
    assert_eq!(body["lists"]["all"]["count"], 2, "{body}");

    // Activity in room a moves it above c.
    alice.send_text(&a, "news").await;
    let body = ss(&alice, req, Some(&pos(&body)), 0).await;
    assert_eq!(room_ids(&body), BTreeSet::from([a.clone()]), "{body}");
    assert!(body["rooms"][&a]["bump_stamp"].as_i64().unwrap() > c_stamp, "{body}");
}
