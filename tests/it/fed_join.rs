//! Membership over federation between two real servers (A on 127.0.0.1, B on 127.0.0.2,
//! plain HTTP): joins by room ID and by alias, invites both ways, rejecting an invite,
//! leaving, bans, and the checks of make_join and send_join.

use axum::http::{Method, StatusCode};
use plexus::federation::client::{self, FederationError};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomVersionId};
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc, fed_server, name_of};

/// A user's membership in a room as the room's members list of `viewer`'s server says.
async fn membership_seen_by(viewer: &TestUser, room_id: &str, user_id: &str) -> Option<String> {
    let members = viewer.get(&format!("/_matrix/client/v3/rooms/{}/members", enc(room_id))).await.ok();
    members["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .find(|m| m["state_key"] == user_id)
        .map(|m| m["content"]["membership"].as_str().expect("membership").to_owned())
}

fn state_event<'a>(events: &'a Value, kind: &str, key: &str) -> Option<&'a Value> {
    events.as_array()?.iter().find(|e| e["type"] == kind && e["state_key"] == key)
}

/// The state of a joined room in a sync answer: the `state` section, then the timeline.
fn synced_state(sync: &Value, room_id: &str, kind: &str, key: &str) -> Option<Value> {
    let room = &sync["rooms"]["join"][room_id];
    state_event(&room["state"]["events"], kind, key)
        .or_else(|| state_event(&room["timeline"]["events"], kind, key))
        .cloned()
}

#[tokio::test]
async fn remote_users_join_public_rooms_by_id_and_by_alias() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let carol = b.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "Lobby" })).await;

    // By room ID, through A.
    let path = format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a_name.as_str()));
    assert_eq!(bob.post(&path, json!({})).await.ok()["room_id"], room);
    assert_eq!(membership_seen_by(&alice, &room, &bob.user_id).await.as_deref(), Some("join"));
    // B has the room with its state: name and both members.
    let sync = bob.sync("").await;
    assert_eq!(synced_state(&sync, &room, "m.room.name", "").expect("name")["content"]["name"], "Lobby");
    for member in [&alice.user_id, &bob.user_id] {
        let event = synced_state(&sync, &room, "m.room.member", member).expect("member");
        assert_eq!(event["content"]["membership"], "join");
    }
    let timeline = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().expect("timeline");
    assert!(timeline.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id));
    assert_eq!(membership_seen_by(&bob, &room, &alice.user_id).await.as_deref(), Some("join"));
    // Bob can speak in it (a local send on B's copy of the room).
    bob.send_text(&room, "hello from B").await;

    // By alias: B asks A's directory, then joins through the servers it names.
    let lounge = alice.create_room(json!({ "preset": "public_chat", "room_alias_name": "lounge" })).await;
    let alias = format!("#lounge:{a_name}");
    let resolved = bob.get(&format!("/_matrix/client/v3/directory/room/{}", enc(&alias))).await.ok();
    assert_eq!(resolved["room_id"], lounge);
    assert_eq!(resolved["servers"], json!([a_name.as_str()]));
    let joined = carol.post(&format!("/_matrix/client/v3/join/{}", enc(&alias)), json!({})).await.ok();
    assert_eq!(joined["room_id"], lounge);
    assert_eq!(membership_seen_by(&alice, &lounge, &carol.user_id).await.as_deref(), Some("join"));
    // An alias nobody has.
    let missing = format!("#nowhere:{a_name}");
    bob.get(&format!("/_matrix/client/v3/directory/room/{}", enc(&missing))).await.assert_error(404, "M_NOT_FOUND");
    // A room ID without a server name (room version 12) and no via: nobody to ask.
    bob.join(&format!("!{}", "A".repeat(43))).await.assert_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn remote_invites_are_seen_accepted_and_rejected() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let dave = b.register("dave").await;
    let room = alice.create_room(json!({ "preset": "private_chat", "name": "Secret" })).await;
    let before = bob.sync("").await["next_batch"].as_str().expect("next_batch").to_owned();

    // Alice invites Bob: A's copy has the invite, co-signed by B.
    let invite = format!("/_matrix/client/v3/rooms/{}/invite", enc(&room));
    alice.post(&invite, json!({ "user_id": bob.user_id })).await.ok();
    assert_eq!(membership_seen_by(&alice, &room, &bob.user_id).await.as_deref(), Some("invite"));
    let sync = bob.sync(&format!("since={before}&timeout=0")).await;
    let invite_state = &sync["rooms"]["invite"][&room]["invite_state"]["events"];
    assert_eq!(state_event(invite_state, "m.room.name", "").expect("name")["content"]["name"], "Secret");
    let own = state_event(invite_state, "m.room.member", &bob.user_id).expect("invite event");
    assert_eq!(own["content"]["membership"], "invite");
    assert_eq!(own["sender"], alice.user_id);
    assert!(state_event(invite_state, "m.room.create", "").is_some());
    let next = sync["next_batch"].as_str().expect("next_batch").to_owned();

    // Bob accepts through the inviter's server (no via needed).
    bob.post(&format!("/_matrix/client/v3/rooms/{}/join", enc(&room)), json!({})).await.ok();
    assert_eq!(membership_seen_by(&alice, &room, &bob.user_id).await.as_deref(), Some("join"));
    let sync = bob.sync(&format!("since={next}&timeout=0")).await;
    assert!(sync["rooms"]["join"][&room].is_object(), "{sync}");
    assert!(sync["rooms"]["invite"].get(&room).is_none());
    assert_eq!(synced_state(&sync, &room, "m.room.name", "").expect("name")["content"]["name"], "Secret");
    let next = sync["next_batch"].as_str().expect("next_batch").to_owned();

    // Bob leaves: his server's copy of the room says so.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    let sync = bob.sync(&format!("since={next}&timeout=0")).await;
    assert!(sync["rooms"]["leave"][&room].is_object(), "{sync}");

    // Dave rejects his invite: make_leave/send_leave through A.
    let before = dave.sync("").await["next_batch"].as_str().expect("next_batch").to_owned();
    alice.post(&invite, json!({ "user_id": dave.user_id })).await.ok();
    let sync = dave.sync(&format!("since={before}&timeout=0")).await;
    assert!(sync["rooms"]["invite"][&room].is_object());
    let next = sync["next_batch"].as_str().expect("next_batch").to_owned();
    dave.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    assert_eq!(membership_seen_by(&alice, &room, &dave.user_id).await.as_deref(), Some("leave"));
    let sync = dave.sync(&format!("since={next}&timeout=0")).await;
    assert!(sync["rooms"]["invite"].get(&room).is_none());
    let left = &sync["rooms"]["leave"][&room]["timeline"]["events"][0];
    assert_eq!(
        (left["state_key"].as_str(), left["content"]["membership"].as_str()),
        (Some(&*dave.user_id), Some("leave"))
    );
    // Invites of createRoom go through the invitee's server too.
    let erin = b.register("erin").await;
    let dm = alice
        .create_room(json!({ "preset": "trusted_private_chat", "invite": [erin.user_id], "is_direct": true }))
        .await;
    let sync = erin.sync("").await;
    let invite_state = &sync["rooms"]["invite"][&dm]["invite_state"]["events"];
    let own = state_event(invite_state, "m.room.member", &erin.user_id).expect("invite event");
    assert_eq!(
        (own["content"]["membership"].as_str(), own["content"]["is_direct"].as_bool()),
        (Some("invite"), Some(true))
    );

    // Nothing pending any more: leaving again is refused.
    dave.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({}))
        .await
        .assert_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn banned_users_cannot_join_over_federation() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    alice.post(&format!("/_matrix/client/v3/rooms/{}/ban", enc(&room)), json!({ "user_id": bob.user_id })).await.ok();
    // A's refusal is what Bob is told, not that the next server could not be reached.
    let path = format!("/_matrix/client/v3/join/{}?server_name={}&via=127.0.0.9:1", enc(&room), enc(a_name.as_str()));
    bob.post(&path, json!({})).await.assert_error(403, "M_FORBIDDEN");
    assert_eq!(membership_seen_by(&alice, &room, &bob.user_id).await.as_deref(), Some("ban"));
    // B did not keep anything of the room.
    assert!(plexus::storage::rooms::get(&b.state.db, &room).await.unwrap().is_none());
}

/// Signs a join template as B would, after `tamper` changed it (or not).
fn signed_join(b: &TestServer, template: &Value, tamper: impl FnOnce(&mut CanonicalJsonObject)) -> (String, Value) {
    let rules = RoomVersionId::V12.rules().expect("rules");
    let mut object: CanonicalJsonObject = serde_json::from_value(template["event"].clone()).expect("canonical");
    object.insert(
        "origin_server_ts".into(),
        CanonicalJsonValue::Integer(ruma::MilliSecondsSinceUnixEpoch::now().0.into()),
    );
    let name = b.state.config.server_name.clone();
    ruma::signatures::hash_and_sign_event(&name, b.state.server_key.pair(), &mut object, &rules.redaction)
        .expect("sign");
    tamper(&mut object);
    let event_id = format!("${}", ruma::signatures::reference_hash(&object, &rules).expect("hash"));
    (event_id, serde_json::to_value(&object).expect("json"))
}

#[tokio::test]
async fn make_join_and_send_join_check_what_they_are_given() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "room_version": "12" })).await;
    let bob = format!("@bob:{}", b.state.config.server_name);
    let make = |versions: &str| format!("/_matrix/federation/v1/make_join/{}/{}?{versions}", enc(&room), enc(&bob));

    // A room version the joining server does not speak.
    let refused = client::request::<Value>(&b.state, &a_name, Method::GET, &make("ver=1&ver=2"), None).await;
    match refused {
        Err(FederationError::Remote { status, errcode, .. }) => {
            assert_eq!((status, errcode.as_str()), (StatusCode::BAD_REQUEST, "M_INCOMPATIBLE_ROOM_VERSION"));
        }
        other => panic!("expected M_INCOMPATIBLE_ROOM_VERSION, got {other:?}"),
    }
    // A user of another server than the asking one.
    let alien = format!("/_matrix/federation/v1/make_join/{}/{}?ver=12", enc(&room), enc("@eve:127.0.0.9"));
    let refused = client::request::<Value>(&b.state, &a_name, Method::GET, &alien, None).await;
    assert!(matches!(refused, Err(FederationError::Remote { status: StatusCode::FORBIDDEN, .. })), "{refused:?}");

    let template: Value = client::request(&b.state, &a_name, Method::GET, &make("ver=11&ver=12"), None).await.unwrap();
    assert_eq!(template["room_version"], "12");
    assert_eq!(template["event"]["content"]["membership"], "join");
    let send = |event_id: &str| format!("/_matrix/federation/v2/send_join/{}/{}", enc(&room), enc(event_id));

    // Changed after signing: the signature no longer verifies.
    let (event_id, forged) = signed_join(&b, &template, |object| {
        object.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(1_000.into()));
    });
    let refused = client::request::<Value>(&b.state, &a_name, Method::PUT, &send(&event_id), Some(&forged)).await;
    assert!(matches!(refused, Err(FederationError::Remote { status: StatusCode::FORBIDDEN, .. })), "{refused:?}");
    // Under another event ID than its own.
    let (_, genuine) = signed_join(&b, &template, |_| {});
    let refused = client::request::<Value>(&b.state, &a_name, Method::PUT, &send(&event_id), Some(&genuine)).await;
    assert!(matches!(refused, Err(FederationError::Remote { status: StatusCode::BAD_REQUEST, .. })), "{refused:?}");
    assert_eq!(membership_seen_by(&alice, &room, &bob).await, None);

    // The genuine join is accepted and answered with the room's state and auth chain.
    let (event_id, genuine) = signed_join(&b, &template, |_| {});
    let answer: Value =
        client::request(&b.state, &a_name, Method::PUT, &send(&event_id), Some(&genuine)).await.unwrap();
    assert_eq!(answer["members_omitted"], false);
    assert_eq!(answer["servers_in_room"], json!([a_name.as_str(), b.state.config.server_name.as_str()]));
    let state = &answer["state"];
    assert!(state_event(state, "m.room.create", "").is_some());
    assert!(state_event(state, "m.room.member", &alice.user_id).is_some());
    assert!(state_event(state, "m.room.member", &bob).is_none(), "the state is the one before the join");
    assert!(!answer["auth_chain"].as_array().expect("auth_chain").is_empty());
    assert_eq!(membership_seen_by(&alice, &room, &bob).await.as_deref(), Some("join"));
}

#[tokio::test]
async fn remote_users_knock() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice
        .create_room(json!({
            "name": "Door",
            "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "knock" } }],
        }))
        .await;
    let before = bob.sync("").await["next_batch"].as_str().expect("next_batch").to_owned();
    let path = format!("/_matrix/client/v3/knock/{}?via={}", enc(&room), enc(a_name.as_str()));
    assert_eq!(bob.post(&path, json!({ "reason": "let me in" })).await.ok()["room_id"], room);
    assert_eq!(membership_seen_by(&alice, &room, &bob.user_id).await.as_deref(), Some("knock"));
    let sync = bob.sync(&format!("since={before}&timeout=0")).await;
    let knock_state = &sync["rooms"]["knock"][&room]["knock_state"]["events"];
    assert_eq!(state_event(knock_state, "m.room.name", "").expect("name")["content"]["name"], "Door");
    let own = state_event(knock_state, "m.room.member", &bob.user_id).expect("own knock");
    assert_eq!(own["content"]["membership"], "knock");

    // Retracting the knock goes through make_leave/send_leave.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    assert_eq!(membership_seen_by(&alice, &room, &bob.user_id).await.as_deref(), Some("leave"));
}

#[tokio::test]
async fn history_from_before_a_remote_join_is_backfilled() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = a.state.config.server_name.clone();
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat", "name": "History" })).await;
    let state = alice.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.history_visibility", enc(&room))).await;
    assert_eq!(state.ok()["history_visibility"], "shared");
    for text in ["one", "two", "three"] {
        alice.send_text(&room, text).await;
    }

    let path = format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(&a_name));
    bob.post(&path, json!({})).await.ok();
    let sync = bob.sync("").await;
    let joined = &sync["rooms"]["join"][&room];
    let timeline = joined["timeline"]["events"].as_array().expect("timeline");
    assert!(timeline.iter().all(|e| e["type"] != "m.room.message"), "history is not in the joined timeline yet");
    let prev_batch = joined["timeline"]["prev_batch"].as_str().expect("prev_batch").to_owned();
    let next_batch = sync["next_batch"].as_str().expect("next_batch").to_owned();

    let page = bob
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from={}&limit=10", enc(&room), enc(&prev_batch)))
        .await
        .ok();
    let chunk = page["chunk"].as_array().expect("chunk");
    let texts: Vec<&str> = chunk.iter().filter_map(|e| e["content"]["body"].as_str()).collect();
    assert_eq!(texts, ["three", "two", "one"], "{page}");
    assert_eq!(chunk[0]["content"]["body"], "three", "newest first");
    // Further back, from the end of that page: the rest of the room's beginning.
    if let Some(end) = page["end"].as_str() {
        let older = bob
            .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from={}&limit=10", enc(&room), enc(end)))
            .await
            .ok();
        assert!(older["chunk"].as_array().expect("chunk").iter().all(|e| e["type"] != "m.room.message"));
    }

    // Backfilled history is not news to an incremental sync.
    let sync = bob.sync(&format!("since={next_batch}&timeout=0")).await;
    let news = sync["rooms"]["join"][&room]["timeline"]["events"].as_array().cloned().unwrap_or_default();
    assert!(news.iter().all(|e| e["type"] != "m.room.message"), "{sync}");
}

#[tokio::test]
async fn restricted_joins_are_authorised_and_co_signed_by_the_resident_server() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let lobby = alice.create_room(json!({ "preset": "public_chat" })).await;
    let allow = json!([{ "type": "m.room_membership", "room_id": lobby }]);
    let inner = alice
        .create_room(json!({
            "room_version": "10",
            "initial_state": [{ "type": "m.room.join_rules", "content": { "join_rule": "restricted", "allow": allow } }],
        }))
        .await;
    let join = |room: &str| format!("/_matrix/client/v3/join/{}?via={}", enc(room), enc(a_name.as_str()));
    // Not in the allowed room yet: refused.
    bob.post(&join(&inner), json!({})).await.assert_error(403, "M_FORBIDDEN");
    bob.post(&join(&lobby), json!({})).await.ok();
    bob.post(&join(&inner), json!({})).await.ok();
    assert_eq!(membership_seen_by(&alice, &inner, &bob.user_id).await.as_deref(), Some("join"));
    // B keeps the join as A co-signed it, naming Alice as the authoriser.
    let event_id = plexus::storage::rooms::current_state_event(&b.state.db, &inner, "m.room.member", &bob.user_id)
        .await
        .unwrap()
        .expect("bob's membership");
    let stored = plexus::storage::events::get(&b.state.db, &event_id).await.unwrap().expect("stored");
    let event: Value = serde_json::from_str(&stored.json).unwrap();
    assert_eq!(event["content"]["join_authorised_via_users_server"], alice.user_id);
    assert!(event["signatures"][a_name.as_str()].is_object(), "{event}");
    assert!(event["signatures"][b.state.config.server_name.as_str()].is_object(), "{event}");
}

#[tokio::test]
async fn concurrent_first_joins_of_one_server_keep_both_members() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let (bob, carol) = (b.register("bob").await, b.register("carol").await);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let path = format!("/_matrix/client/v3/join/{}?via={}", enc(&room), enc(a_name.as_str()));
    let (first, second) = tokio::join!(bob.post(&path, json!({})), carol.post(&path, json!({})));
    first.ok();
    second.ok();
    // B's copy of the room has both (the second joined on top of the first).
    for user in [&bob, &carol] {
        let membership = plexus::storage::rooms::membership(&b.state.db, &room, &user.user_id).await.unwrap();
        assert_eq!(membership.as_deref(), Some("join"), "{}", user.user_id);
    }
    // The first to get the room joined through A; the other joined B's copy locally, which
    // reaches A once local events are sent to the room's servers (another branch).
    let mut seen_by_a = Vec::new();
    for user in [&bob, &carol] {
        seen_by_a.push(membership_seen_by(&alice, &room, &user.user_id).await);
    }
    assert!(seen_by_a.contains(&Some("join".to_owned())), "{seen_by_a:?}");
}
