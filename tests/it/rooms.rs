//! Rooms: presets, power levels, bans, redaction, history visibility, pagination, and the
//! PDUs themselves (signatures, event IDs).

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::harness::{TestServer, enc};
use crate::room_util::{C, join, public_room, state};

fn state_of(events: &Value, kind: &str) -> Value {
    events.as_array().unwrap().iter().find(|e| e["type"] == kind).map(|e| e["content"].clone()).unwrap_or(Value::Null)
}

#[tokio::test]
async fn presets_set_their_initial_state() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    for (preset, join_rule, guest) in [
        ("private_chat", "invite", "can_join"),
        ("trusted_private_chat", "invite", "can_join"),
        ("public_chat", "public", ""),
    ] {
        let room = alice.create_room(json!({ "preset": preset, "invite": [bob.user_id], "room_version": "10" })).await;
        let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room))).await.ok();
        assert_eq!(state_of(&state, "m.room.join_rules")["join_rule"], join_rule, "{preset}");
        assert_eq!(state_of(&state, "m.room.history_visibility")["history_visibility"], "shared");
        assert_eq!(state_of(&state, "m.room.guest_access")["guest_access"].as_str().unwrap_or(""), guest, "{preset}");
        let pl = state_of(&state, "m.room.power_levels");
        assert_eq!(pl["users"][&alice.user_id], 100);
        let bob_level = if preset == "trusted_private_chat" { json!(100) } else { Value::Null };
        assert_eq!(pl["users"][&bob.user_id], bob_level, "{preset}");
        assert_eq!(state_of(&state, "m.room.create")["creator"], json!(alice.user_id));
    }
    // Room version 12: creators are implicit and the room ID is the create event's hash.
    let room = alice.create_room(json!({ "preset": "trusted_private_chat", "invite": [bob.user_id] })).await;
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state", enc(&room))).await.ok();
    let create = state.as_array().unwrap().iter().find(|e| e["type"] == "m.room.create").unwrap().clone();
    assert_eq!(create["content"]["room_version"], "12");
    assert_eq!(create["content"]["additional_creators"], json!([bob.user_id]));
    assert_eq!(room[1..], create["event_id"].as_str().unwrap()[1..]);
    assert!(state_of(&state, "m.room.power_levels")["users"].get(&alice.user_id).is_none());
}

#[tokio::test]
async fn power_levels_and_bans_are_enforced() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let name_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.name", enc(&room));
    bob.put(&name_path, json!({ "name": "bob's" })).await.assert_error(403, "M_FORBIDDEN");
    alice.put(&name_path, json!({ "name": "alice's" })).await.ok();
    let bad = alice
        .put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.join_rules", enc(&room)), json!({ "join_rule": 5 }))
        .await;
    bad.assert_error(400, "M_BAD_JSON");

    let ban = format!("/_matrix/client/v3/rooms/{}/ban", enc(&room));
    bob.post(&ban, json!({ "user_id": alice.user_id })).await.assert_error(403, "M_FORBIDDEN");
    alice.post(&ban, json!({ "user_id": bob.user_id, "reason": "spam" })).await.ok();
    bob.join(&room).await.assert_error(403, "M_FORBIDDEN");
    let member = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.member/{}", enc(&room), enc(&bob.user_id)))
        .await
        .ok();
    assert_eq!(member, json!({ "membership": "ban", "reason": "spam", "displayname": "bob" }));
    alice.post(&format!("/_matrix/client/v3/rooms/{}/unban", enc(&room)), json!({ "user_id": bob.user_id })).await.ok();
    bob.join(&room).await.ok();
    // Unknown room and non-members.
    alice.get("/_matrix/client/v3/rooms/!nope:localhost/state").await.assert_error(404, "M_NOT_FOUND");
    let carol = server.register("carol").await;
    carol.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(&room))).await.assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn redaction_keeps_exactly_the_keys_of_the_room_version() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    for version in ["1", "10", "11", "12"] {
        let room = alice.create_room(json!({ "room_version": version })).await;
        let event = alice.send_text(&room, "secret").await;
        // A state event whose content keys survive redaction per version.
        let pl_path = format!("/_matrix/client/v3/rooms/{}/state/m.room.power_levels/", enc(&room));
        let pl = alice.get(&pl_path).await.ok();
        let redact = format!("/_matrix/client/v3/rooms/{}/redact/{}/r1", enc(&room), enc(&event));
        alice.put(&redact, json!({ "reason": "oops" })).await.ok();
        let got = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event))).await.ok();
        assert_eq!(got["content"], json!({}), "v{version}");
        assert!(got["unsigned"]["redacted_because"].is_object(), "v{version}: {got}");
        let keys: BTreeSet<&str> = got.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            BTreeSet::from(["content", "event_id", "origin_server_ts", "room_id", "sender", "type", "unsigned"])
        );
        // The stored PDU keeps only the version's top-level keys.
        let id = ruma::OwnedEventId::try_from(event.as_str()).unwrap();
        let pdu = plexus::rooms::get_pdu(&server.state, &id).await.unwrap().unwrap();
        let object: Value = serde_json::from_str(&pdu.json).unwrap();
        let mut top: BTreeSet<&str> = object.as_object().unwrap().keys().map(String::as_str).collect();
        top.remove("unsigned");
        let mut expected = BTreeSet::from([
            "auth_events",
            "content",
            "depth",
            "hashes",
            "origin_server_ts",
            "prev_events",
            "room_id",
            "sender",
            "signatures",
            "type",
        ]);
        if version == "1" || version == "10" {
            expected.insert("origin");
        }
        if version == "1" {
            expected.insert("event_id");
        }
        assert_eq!(top, expected, "v{version}");
        assert!(pl["users"].is_object());
    }
}

#[tokio::test]
async fn history_visibility_joined_hides_earlier_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let carol = server.register("carol").await;
    let room = alice
        .create_room(json!({
            "preset": "public_chat",
            "initial_state": [{ "type": "m.room.history_visibility", "content": { "history_visibility": "joined" } }],
        }))
        .await;
    let before = alice.send_text(&room, "before").await;
    carol.join(&room).await.ok();
    let after = alice.send_text(&room, "after").await;
    let page = carol.get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room))).await.ok();
    let ids: Vec<&str> = page["chunk"].as_array().unwrap().iter().filter_map(|e| e["event_id"].as_str()).collect();
    assert!(ids.contains(&after.as_str()));
    assert!(!ids.contains(&before.as_str()));
    carol
        .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&before)))
        .await
        .assert_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn pagination_over_a_thousand_events_returns_each_once_in_order() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let start = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let sent = alice.send_numbered(&room, 1000).await;
    let filter = enc(r#"{"types":["m.room.message"]}"#);
    let mut back = Vec::new();
    let mut from = String::new();
    loop {
        let q = if from.is_empty() { String::new() } else { format!("&from={from}") };
        let page = alice
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=97&filter={filter}{q}", enc(&room)))
            .await
            .ok();
        back.extend(page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()));
        match page["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    back.reverse();
    assert_eq!(back, sent);
    let mut fwd = Vec::new();
    let mut from = start;
    loop {
        let page = alice
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=89&from={from}", enc(&room)))
            .await
            .ok();
        let chunk = page["chunk"].as_array().unwrap();
        if chunk.is_empty() {
            break;
        }
        fwd.extend(chunk.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()));
        match page["end"].as_str() {
            Some(end) => from = end.to_owned(),
            None => break,
        }
    }
    assert_eq!(fwd, sent);
}

#[tokio::test]
async fn events_are_signed_with_the_published_key_and_named_by_their_hash() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let keys = server.get("/_matrix/key/v2/server").await.ok();
    let (key_id, key) = keys["verify_keys"].as_object().unwrap().iter().next().unwrap();
    let key_b64 = key["key"].as_str().unwrap().to_owned();
    for version in ["3", "10", "12"] {
        let room = alice.create_room(json!({ "room_version": version })).await;
        let event = alice.send_text(&room, "signed").await;
        let id = ruma::OwnedEventId::try_from(event.as_str()).unwrap();
        let pdu = plexus::rooms::get_pdu(&server.state, &id).await.unwrap().unwrap();
        let object: ruma::CanonicalJsonObject = serde_json::from_str(&pdu.json).unwrap();
        let version_id = ruma::RoomVersionId::try_from(version).unwrap();
        let rules = version_id.rules().unwrap();
        let mut public_keys = ruma::signatures::PublicKeyMap::new();
        let server_keys: ruma::signatures::PublicKeySet =
            [(key_id.clone(), ruma::serde::Base64::parse(&key_b64).unwrap())].into_iter().collect();
        public_keys.insert(server.server_name.clone(), server_keys);
        let verified = ruma::signatures::verify_event(&public_keys, &object, &rules).unwrap();
        assert_eq!(verified, ruma::signatures::Verified::All, "v{version}");
        let hash = ruma::signatures::reference_hash(&object, &rules).unwrap();
        assert_eq!(event, format!("${hash}"), "v{version}");
    }
}

#[tokio::test]
async fn send_is_idempotent_per_transaction_and_oversize_events_are_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/same", enc(&room));
    let a = alice.put(&path, json!({ "body": "x" })).await.ok();
    let b = alice.put(&path, json!({ "body": "x" })).await.ok();
    assert_eq!(a["event_id"], b["event_id"]);
    let big = "x".repeat(70_000);
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/big", enc(&room));
    alice.put(&path, json!({ "body": big })).await.assert_error(413, "M_TOO_LARGE");
}

#[tokio::test]
async fn profile_changes_update_member_events_of_joined_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let joined = public_room(&alice).await;
    let left = public_room(&alice).await;
    join(&bob, &joined).await;
    join(&bob, &left).await;
    bob.post(&format!("{C}/rooms/{}/leave", enc(&left)), json!({})).await.ok();
    let since = alice.sync("?timeout=0").await["next_batch"].as_str().unwrap().to_owned();

    let path = format!("{C}/profile/{}/displayname", enc(&bob.user_id));
    bob.put(&path, json!({ "displayname": "Bobby" })).await.ok();
    bob.put(&format!("{C}/profile/{}/avatar_url", enc(&bob.user_id)), json!({ "avatar_url": "mxc://x/a" })).await.ok();
    let member = state(&alice, &joined, "m.room.member", &bob.user_id).await;
    assert_eq!(member, json!({ "membership": "join", "displayname": "Bobby", "avatar_url": "mxc://x/a" }));
    assert_eq!(state(&alice, &left, "m.room.member", &bob.user_id).await["membership"], "leave");

    let sync = alice.sync(&format!("?timeout=0&since={since}")).await;
    let events = sync["rooms"]["join"][&joined]["timeline"]["events"].as_array().unwrap().clone();
    let names: Vec<&Value> =
        events.iter().filter(|e| e["type"] == "m.room.member").map(|e| &e["content"]["displayname"]).collect();
    assert_eq!(names, [&json!("Bobby"), &json!("Bobby")]);
    assert!(sync["rooms"]["join"].get(&left).is_none());

    // Clearing the name removes it from the member event too.
    bob.put(&path, json!({ "displayname": null })).await.ok();
    let member = state(&alice, &joined, "m.room.member", &bob.user_id).await;
    assert_eq!(member, json!({ "membership": "join", "avatar_url": "mxc://x/a" }));
}

/// Room version 12 derives the room ID from the create event: rooms created alike at the same
/// moment by one user must still be distinct rooms.
#[tokio::test]
async fn concurrent_creations_by_one_user_make_distinct_rooms() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let rooms = futures::future::join_all((0..8).map(|_| alice.create_room(json!({})))).await;
    let distinct: BTreeSet<&String> = rooms.iter().collect();
    assert_eq!(distinct.len(), rooms.len(), "{rooms:?}");
    for room in &rooms {
        let members = alice.get(&format!("/_matrix/client/v3/rooms/{}/joined_members", enc(room))).await.ok();
        assert!(members["joined"][alice.user_id.as_str()].is_object(), "{room}: {members}");
    }
}
