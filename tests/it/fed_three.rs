//! Three Plexus servers (A on 127.0.0.1, B on .2, C on .3, plain HTTP) sharing one room,
//! everything over the wire: joins by room ID, messages every way, a server down and back,
//! concurrent state changes resolved alike everywhere, and bad PDUs refused.

use std::time::Duration;

use axum::http::Method;
use plexus::federation::client;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc, fed_server, name_of, wait_for};

/// The message bodies of a room in a user's initial sync, in timeline order.
async fn bodies(user: &TestUser, room_id: &str) -> Vec<String> {
    let filter = enc(&json!({ "room": { "timeline": { "limit": 100 } } }).to_string());
    let sync = user.sync(&format!("timeout=0&filter={filter}")).await;
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

async fn wait_for_bodies(users: &[&TestUser], room_id: &str, wanted: &[&str]) {
    for user in users {
        wait_for(&format!("{wanted:?} at {}", user.user_id), async || {
            let have = bodies(user, room_id).await;
            wanted.iter().all(|w| have.iter().any(|h| h == w))
        })
        .await;
    }
}

async fn membership(server: &TestServer, room_id: &str, user: &str) -> Option<String> {
    plexus::storage::rooms::membership(&server.state.db, room_id, user).await.unwrap()
}

/// Three servers and a public room (version 11) of alice@A that bob@B and carol@C joined
/// over federation, each seeing the three members.
struct Three {
    a: TestServer,
    b: TestServer,
    c: TestServer,
    alice: TestUser,
    bob: TestUser,
    carol: TestUser,
    room_id: String,
}

async fn three_in_a_room() -> Three {
    let (a, b, c) = (fed_server("127.0.0.1").await, fed_server("127.0.0.2").await, fed_server("127.0.0.3").await);
    let (alice, bob, carol) = (a.register("alice").await, b.register("bob").await, c.register("carol").await);
    // Bob may change the room's state too.
    let levels = json!({ "users": { &alice.user_id: 100, &bob.user_id: 50 } });
    let room_id = alice
        .create_room(json!({ "preset": "public_chat", "room_version": "11", "power_level_content_override": levels }))
        .await;
    // Bob through A, Carol through B (a server that joined over federation itself).
    let via =
        |server: &TestServer| format!("/_matrix/client/v3/join/{}?via={}", enc(&room_id), enc(&server.server_name));
    bob.post(&via(&a), json!({})).await.ok();
    carol.post(&via(&b), json!({})).await.ok();
    for server in [&a, &b, &c] {
        for user in [&alice, &bob, &carol] {
            wait_for(&format!("{} joined at {}", user.user_id, server.server_name), async || {
                membership(server, &room_id, &user.user_id).await.as_deref() == Some("join")
            })
            .await;
        }
    }
    Three { a, b, c, alice, bob, carol, room_id }
}

#[tokio::test]
async fn messages_flow_every_way_and_survive_a_server_down() {
    let Three { a, b, c, alice, bob, carol, room_id } = three_in_a_room().await;
    let users = [&alice, &bob, &carol];
    // One after the other, each waiting for the last: every sync has them in this order.
    for (user, text) in [(&alice, "a1"), (&bob, "b1"), (&carol, "c1")] {
        user.send_text(&room_id, text).await;
        wait_for_bodies(&users, &room_id, &[text]).await;
    }
    for user in users {
        assert_eq!(bodies(user, &room_id).await, ["a1", "b1", "c1"], "{}", user.user_id);
    }

    // C goes down; A and B talk meanwhile (their deliveries to C fail).
    let c_name = name_of(&c);
    let stopped = c.stop_keeping_data().await;
    alice.send_text(&room_id, "a2").await;
    wait_for_bodies(&[&bob], &room_id, &["a2"]).await;
    bob.send_text(&room_id, "b2").await;
    wait_for_bodies(&[&alice], &room_id, &["b2"]).await;
    for server in [&a, &b] {
        wait_for("a failed delivery to C", async || {
            let failing = plexus::storage::federation::failing_destinations(&server.state.db).await.unwrap();
            failing.iter().any(|(name, failures, _)| name == c_name.as_str() && *failures > 0)
        })
        .await;
    }

    // C is back: its next message (a signed request to A and B) has them retry at once, and
    // nothing sent while it was down is lost.
    let c = stopped.start().await;
    carol.send_text(&room_id, "c2").await;
    wait_for_bodies(&users, &room_id, &["a2", "b2", "c2"]).await;
    let at_c = bodies(&carol, &room_id).await;
    let position = |text: &str| at_c.iter().position(|b| b == text).unwrap();
    assert!(position("c1") < position("a2") && position("a2") < position("b2"), "{at_c:?}");
    for server in [&a, &b] {
        let queued =
            plexus::storage::federation::next_batch(&server.state.db, c_name.as_str(), 100, 100).await.unwrap();
        assert!(queued.is_empty(), "{queued:?}");
    }
    drop(c);
}

async fn topic_event(server: &TestServer, room_id: &str) -> Option<String> {
    plexus::storage::rooms::current_state_event(&server.state.db, room_id, "m.room.topic", "").await.unwrap()
}

#[tokio::test]
async fn concurrent_state_changes_resolve_alike_everywhere() {
    let Three { a, b, c, alice, bob, room_id, carol: _ } = three_in_a_room().await;
    let topic = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic", enc(&room_id));
    let (from_a, from_b) =
        tokio::join!(alice.put(&topic, json!({ "topic": "by A" })), bob.put(&topic, json!({ "topic": "by B" })));
    let ids =
        [from_a.ok()["event_id"].as_str().unwrap().to_owned(), from_b.ok()["event_id"].as_str().unwrap().to_owned()];
    // Every server has both events, and all three resolve to the same one.
    for server in [&a, &b, &c] {
        for id in &ids {
            wait_for(&format!("{id} at {}", server.server_name), async || {
                plexus::storage::events::get(&server.state.db, id).await.unwrap().is_some()
            })
            .await;
        }
    }
    wait_for("the same topic everywhere", async || {
        let (at_a, at_b, at_c) =
            (topic_event(&a, &room_id).await, topic_event(&b, &room_id).await, topic_event(&c, &room_id).await);
        at_a.is_some() && at_a == at_b && at_b == at_c
    })
    .await;
    let winner = topic_event(&a, &room_id).await.unwrap();
    assert!(ids.contains(&winner), "{winner} {ids:?}");
}

/// A message of `sender` (a user of `signer`) built and signed by hand on A's head.
async fn signed_event(
    signer: &TestServer,
    at: &TestServer,
    room: &RoomId,
    sender: &str,
    (kind, state_key, content): (&str, Option<&str>, Value),
) -> CanonicalJsonObject {
    let state = plexus::rooms::current_state(&at.state, room).await.unwrap();
    let auth: Vec<String> = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]
        .iter()
        .filter_map(|(t, k)| state.get(&((*t).into(), (*k).to_owned())).map(ToString::to_string))
        .collect();
    let prev = plexus::storage::rooms::extremities(&at.state.db, room.as_str()).await.unwrap();
    let mut depth = 0;
    for id in &prev {
        let pdu = plexus::rooms::get_pdu(&at.state, &ruma::EventId::parse(id).unwrap()).await.unwrap();
        depth = depth.max(pdu.map_or(0, |p| p.depth));
    }
    let mut value = json!({
        "room_id": room,
        "sender": sender,
        "type": kind,
        "content": content,
        "prev_events": prev,
        "auth_events": auth,
        "depth": depth + 1,
        "origin_server_ts": plexus::storage::now_ms(),
    });
    if let Some(key) = state_key {
        value["state_key"] = json!(key);
    }
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(value).unwrap() else { unreachable!() };
    let rules = RoomVersionId::V11.rules().unwrap();
    ruma::signatures::hash_and_sign_event(
        &signer.server_name,
        signer.state.server_key.pair(),
        &mut object,
        &rules.redaction,
    )
    .unwrap();
    object
}

fn event_id_of(object: &CanonicalJsonObject) -> String {
    plexus::rooms::inbound::event_id_of(object, &RoomVersionId::V11.rules().unwrap()).unwrap().to_string()
}

/// Sends one PDU from `from` to `to` in a signed transaction; the answer for it.
async fn send_one(from: &TestServer, to: &TestServer, txn_id: &str, pdu: &CanonicalJsonObject) -> Value {
    let body = json!({
        "origin": from.server_name,
        "origin_server_ts": plexus::storage::now_ms(),
        "pdus": [pdu],
    });
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    let answer: Value =
        client::request(&from.state, &name_of(to), Method::PUT, &path, Some(&body)).await.expect("answered");
    answer["pdus"][event_id_of(pdu)].clone()
}

fn message(body: &str) -> (&'static str, Option<&'static str>, Value) {
    ("m.room.message", None, json!({ "msgtype": "m.text", "body": body }))
}

#[tokio::test]
async fn bad_pdus_are_refused() {
    let Three { a, b: _b, c, alice, carol, room_id, .. } = three_in_a_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    let stored = async |id: &str| plexus::storage::events::get(&a.state.db, id).await.unwrap();

    // Changed after signing: the signature does not verify.
    let mut forged = signed_event(&c, &a, &room, &carol.user_id, message("forged")).await;
    forged.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(7u32.into()));
    let answer = send_one(&c, &a, "forged", &forged).await;
    assert!(answer["error"].as_str().unwrap_or("").contains("signature"), "{answer}");
    assert!(stored(&event_id_of(&forged)).await.is_none());

    // Content changed after signing (the signature covers the redacted form only): the hash
    // does not match, so the event is kept redacted, as the spec says, without its content.
    let mut tampered = signed_event(&c, &a, &room, &carol.user_id, message("original")).await;
    tampered.insert(
        "content".into(),
        CanonicalJsonValue::try_from(json!({ "msgtype": "m.text", "body": "changed" })).unwrap(),
    );
    let answer = send_one(&c, &a, "tampered", &tampered).await;
    assert_eq!(answer, json!({}), "{answer}");
    let kept: Value =
        serde_json::from_str(&stored(&event_id_of(&tampered)).await.expect("kept redacted").json).unwrap();
    assert_eq!(kept["content"], json!({}), "{kept}");
    assert!(!bodies(&alice, &room_id).await.iter().any(|b| b == "changed" || b == "original"));

    // Carol may not change the power levels: fails auth.
    let levels = json!({ "users": { &carol.user_id: 100 } });
    let coup = signed_event(&c, &a, &room, &carol.user_id, ("m.room.power_levels", Some(""), levels)).await;
    let answer = send_one(&c, &a, "coup", &coup).await;
    assert!(answer["error"].is_string(), "{answer}");
    assert!(stored(&event_id_of(&coup)).await.is_none());

    // C's server banned by the room's ACL: its events are refused.
    // ACLs match the host, without the port.
    let acl = json!({ "allow": ["*"], "deny": [c.addr.ip().to_string()], "allow_ip_literals": true });
    alice.put(&format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl", enc(&room_id)), acl).await.ok();
    let denied = signed_event(&c, &a, &room, &carol.user_id, message("denied")).await;
    let answer = send_one(&c, &a, "denied", &denied).await;
    assert!(answer["error"].as_str().unwrap_or("").contains("ACL"), "{answer}");
    assert!(stored(&event_id_of(&denied)).await.is_none());
    // Nor may it use the membership handshakes or read the room's events.
    let dave = format!("@dave:{}", c.server_name);
    let prev = plexus::storage::rooms::extremities(&a.state.db, &room_id).await.unwrap();
    for path in [
        format!("/_matrix/federation/v1/make_join/{}/{}?ver=11", enc(&room_id), enc(&dave)),
        format!("/_matrix/federation/v1/make_leave/{}/{}", enc(&room_id), enc(&carol.user_id)),
        format!("/_matrix/federation/v1/make_knock/{}/{}?ver=11", enc(&room_id), enc(&dave)),
        format!("/_matrix/federation/v1/event/{}", enc(&prev[0])),
        format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room_id), enc(&prev[0])),
    ] {
        let refused = client::request::<Value>(&c.state, &name_of(&a), Method::GET, &path, None).await;
        assert!(
            matches!(refused, Err(client::FederationError::Remote { ref errcode, .. }) if errcode == "M_FORBIDDEN"),
            "{path}: {refused:?}"
        );
    }
    let leave = signed_event(
        &c,
        &a,
        &room,
        &carol.user_id,
        ("m.room.member", Some(&carol.user_id), json!({ "membership": "leave" })),
    )
    .await;
    let path = format!("/_matrix/federation/v2/send_leave/{}/{}", enc(&room_id), enc(&event_id_of(&leave)));
    let refused = client::request::<Value>(
        &c.state,
        &name_of(&a),
        Method::PUT,
        &path,
        Some(&serde_json::to_value(&leave).unwrap()),
    )
    .await;
    assert!(
        matches!(refused, Err(client::FederationError::Remote { ref errcode, .. }) if errcode == "M_FORBIDDEN"),
        "{refused:?}"
    );
    assert_eq!(membership(&a, &room_id, &carol.user_id).await.as_deref(), Some("join"));
}

fn key_map(server: &TestServer) -> ruma::signatures::PublicKeyMap {
    let key = &server.state.server_key;
    let public = ruma::serde::Base64::parse(&key.public_key_b64).expect("base64");
    let set = ruma::signatures::PublicKeySet::from([(key.key_id.clone(), public)]);
    ruma::signatures::PublicKeyMap::from([(server.state.config.server_name.clone(), set)])
}

#[tokio::test]
async fn a_gap_longer_than_get_missing_events_is_bridged_with_the_state_at_it() {
    let Three { a: _a, b, c, bob, carol, room_id, .. } = three_in_a_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    // B has many events nobody else heard of (more than one get_missing_events gives), a
    // topic change first; C is sent only the last.
    let topic = ("m.room.topic", Some(""), json!({ "topic": "missed" }));
    let mut events = vec![signed_event(&b, &b, &room, &bob.user_id, topic).await];
    for i in 0..30 {
        let previous = events.last().unwrap().clone();
        let outcome = plexus::rooms::inbound::receive(&b.state, &room, previous, &key_map(&b)).await.unwrap();
        assert!(matches!(outcome, plexus::rooms::inbound::Outcome::Accepted(_)), "{outcome:?}");
        events.push(signed_event(&b, &b, &room, &bob.user_id, message(&format!("m{i}"))).await);
    }
    let last = events.pop().unwrap();
    let outcome = plexus::rooms::inbound::receive(&b.state, &room, last.clone(), &key_map(&b)).await.unwrap();
    assert!(matches!(outcome, plexus::rooms::inbound::Outcome::Accepted(_)), "{outcome:?}");

    let answer = send_one(&b, &c, "long-gap", &last).await;
    assert_eq!(answer, json!({}), "{answer}");
    // C judged it on the state B had then: the topic it never received is C's now.
    assert_eq!(topic_event(&c, &room_id).await, Some(event_id_of(&events[0])));
    assert!(bodies(&carol, &room_id).await.contains(&"m29".to_owned()));
    // The missing prev event is kept (outside the timeline) with the state after it.
    let prev =
        plexus::storage::events::get(&c.state.db, &event_id_of(events.last().unwrap())).await.unwrap().expect("prev");
    assert!(prev.stream_pos.is_none() && prev.state_group.is_some(), "{prev:?}");
}

#[tokio::test]
async fn presence_of_local_users_reaches_the_servers_sharing_a_room() {
    let Three { a, b, c, alice, bob, carol, .. } = three_in_a_room().await;
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id));
    alice.put(&path, json!({ "presence": "unavailable", "status_msg": "lunch" })).await.ok();
    for user in [&bob, &carol] {
        wait_for(&format!("alice's presence at {}", user.user_id), async || {
            let seen = user.get(&path).await.ok();
            seen["presence"] == "unavailable" && seen["status_msg"] == "lunch"
        })
        .await;
    }
    drop((a, b, c));
}

/// A remote user's presence holds while their server keeps sending it (again every five
/// sixths of `remote_offline_after`, even unchanged), and goes offline once the server falls
/// silent for `remote_offline_after`.
#[tokio::test]
async fn remote_presence_is_sent_again_and_times_out_when_its_server_falls_silent() {
    let quick = |c: &mut plexus::config::Config| {
        c.federation.insecure_plain_http = true;
        c.presence.remote_offline_after = plexus::config::Lifetime(3_000);
    };
    let (a, b) = (TestServer::start_on("127.0.0.1", quick).await, TestServer::start_on("127.0.0.2", quick).await);
    let (alice, bob) = (a.register("alice").await, b.register("bob").await);
    let room_id = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.post(&format!("/_matrix/client/v3/join/{}?via={}", enc(&room_id), enc(&a.server_name)), json!({})).await.ok();
    let path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id));
    alice.put(&path, json!({ "presence": "online" })).await.ok();
    wait_for("alice online at B", async || bob.get(&path).await.ok()["presence"] == "online").await;
    // Twice the timeout without a change: A has sent it again meanwhile.
    tokio::time::sleep(Duration::from_millis(6_000)).await;
    assert_eq!(bob.get(&path).await.ok()["presence"], json!("online"));
    drop(a);
    wait_for("alice offline at B", async || bob.get(&path).await.ok()["presence"] == "offline").await;
}
