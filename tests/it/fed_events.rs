//! Room events between two (or three) Plexus servers on 127.0.0.x: PDUs pushed both ways
//! into /sync, transactions (idempotent, a bad PDU among good ones, a gap filled with
//! get_missing_events), events served only to servers in the room, typing and to-device
//! EDUs both ways.
//!
//! Joins over federation are built elsewhere: the shared room is made by handing the
//! events of a room of server A to server B's inbound pipeline (what a join would fetch),
//! after which B's user joins locally and everything else goes over the wire.

use axum::http::Method;
use plexus::federation::client;
use plexus::rooms::inbound::{self, Outcome};
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use ruma::{CanonicalJsonObject, CanonicalJsonValue, RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc, fed_server, name_of, wait_for};

fn key_map(server: &TestServer) -> PublicKeyMap {
    let key = &server.state.server_key;
    let set = PublicKeySet::from([(key.key_id.clone(), Base64::parse(&key.public_key_b64).expect("base64"))]);
    PublicKeyMap::from([(server.state.config.server_name.clone(), set)])
}

/// Gives `to` every event of a room of `from`, in order, through its inbound pipeline.
async fn replicate(from: &TestServer, to: &TestServer, room: &RoomId) {
    let version = plexus::rooms::room_version(&from.state, room).await.unwrap();
    let creator = plexus::storage::rooms::creator(&from.state.db, room.as_str()).await.unwrap().unwrap();
    let mut tx = to.state.db.begin().await.unwrap();
    plexus::storage::rooms::create(&mut tx, room.as_str(), version.as_str(), &creator).await.unwrap();
    tx.commit().await.unwrap();
    let events =
        plexus::storage::events::timeline_range(&from.state.db, room.as_str(), 0, i64::MAX, 1000, false).await.unwrap();
    for event in events {
        let object: CanonicalJsonObject = serde_json::from_str(&event.json).unwrap();
        let outcome = inbound::receive(&to.state, room, object, &key_map(from)).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
    }
}

/// Two servers sharing a public room (version 11) of alice@A that bob@B joined.
struct Shared {
    a: TestServer,
    b: TestServer,
    alice: TestUser,
    bob: TestUser,
    room_id: String,
}

async fn shared_room() -> Shared {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let alice = a.register("alice").await;
    let bob = b.register("bob").await;
    let room_id = alice.create_room(json!({ "preset": "public_chat", "room_version": "11" })).await;
    replicate(&a, &b, &RoomId::parse(&room_id).unwrap()).await;
    bob.join(&room_id).await.ok();
    wait_for("bob's join to reach A", async || membership(&a, &room_id, &bob.user_id).await.as_deref() == Some("join"))
        .await;
    Shared { a, b, alice, bob, room_id }
}

async fn membership(server: &TestServer, room_id: &str, user: &str) -> Option<String> {
    plexus::storage::rooms::membership(&server.state.db, room_id, user).await.unwrap()
}

/// The bodies of the messages of a room in a user's initial sync.
async fn synced_bodies(user: &TestUser, room_id: &str) -> Vec<String> {
    let sync = user.sync("timeout=0").await;
    sync["rooms"]["join"][room_id]["timeline"]["events"]
        .as_array()
        .map(|events| events.iter().filter_map(|e| e["content"]["body"].as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

/// A message of `sender` (a user of `signer`) built and signed by hand on `prev`.
async fn signed_message(
    signer: &TestServer,
    at: &TestServer,
    room: &RoomId,
    sender: &str,
    prev: &[String],
    body: &str,
) -> CanonicalJsonObject {
    let state = plexus::rooms::current_state(&at.state, room).await.unwrap();
    let auth: Vec<String> = [("m.room.create", ""), ("m.room.power_levels", ""), ("m.room.member", sender)]
        .iter()
        .filter_map(|(t, k)| state.get(&((*t).into(), (*k).to_owned())).map(ToString::to_string))
        .collect();
    let mut depth = 0;
    for id in prev {
        let pdu = plexus::rooms::get_pdu(&at.state, &ruma::EventId::parse(id).unwrap()).await.unwrap();
        depth = depth.max(pdu.map_or(0, |p| p.depth));
    }
    let value = json!({
        "room_id": room,
        "sender": sender,
        "type": "m.room.message",
        "content": { "msgtype": "m.text", "body": body },
        "prev_events": prev,
        "auth_events": auth,
        "depth": depth + 1,
        "origin_server_ts": plexus::storage::now_ms(),
    });
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
    inbound::event_id_of(object, &RoomVersionId::V11.rules().unwrap()).unwrap().to_string()
}

/// A signed `PUT /send/{txn_id}` from `from` to `to`.
async fn send_txn(from: &TestServer, to: &TestServer, txn_id: &str, pdus: Vec<Value>, edus: Vec<Value>) -> Value {
    let body = json!({
        "origin": from.server_name,
        "origin_server_ts": plexus::storage::now_ms(),
        "pdus": pdus,
        "edus": edus,
    });
    let path = format!("/_matrix/federation/v1/send/{txn_id}");
    client::request(&from.state, &name_of(to), Method::PUT, &path, Some(&body)).await.expect("transaction answered")
}

#[tokio::test]
async fn messages_go_both_ways_into_sync() {
    let Shared { a, b, alice, bob, room_id } = shared_room().await;
    // Bob's join, received by A over /send, is in alice's sync.
    let sync = alice.sync("timeout=0").await;
    let events = sync["rooms"]["join"][&room_id]["timeline"]["events"].as_array().unwrap().clone();
    assert!(events.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bob.user_id.as_str()));

    alice.send_text(&room_id, "hello from A").await;
    wait_for("A's message in bob's sync", async || {
        synced_bodies(&bob, &room_id).await.contains(&"hello from A".into())
    })
    .await;
    bob.send_text(&room_id, "hello from B").await;
    wait_for("B's message in alice's sync", async || {
        synced_bodies(&alice, &room_id).await.contains(&"hello from B".into())
    })
    .await;
    // Delivered: nothing left in the queues.
    let queued = plexus::storage::federation::next_batch(&a.state.db, b.server_name.as_str(), 100, 100).await.unwrap();
    assert!(queued.is_empty(), "{queued:?}");

    // A room only we are in queues nothing.
    let lonely = alice.create_room(json!({})).await;
    alice.send_text(&lonely, "alone").await;
    let destinations = plexus::storage::federation::queued_destinations(&a.state.db).await.unwrap();
    assert!(destinations.is_empty() || destinations == vec![b.server_name.clone()], "{destinations:?}");
    let queued = plexus::storage::federation::next_batch(&a.state.db, b.server_name.as_str(), 100, 100).await.unwrap();
    assert!(queued.iter().all(|q| q.event_id.is_none()), "no PDU of the lonely room: {queued:?}");

    // Bob leaves: A hears of it although B is no longer in the room after.
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room_id)), json!({})).await.ok();
    wait_for("bob's leave to reach A", async || {
        membership(&a, &room_id, &bob.user_id).await.as_deref() == Some("leave")
    })
    .await;
}

#[tokio::test]
async fn transactions_are_idempotent_and_judge_each_pdu() {
    let Shared { a, b, alice, bob, room_id } = shared_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    let prev = plexus::storage::rooms::extremities(&a.state.db, &room_id).await.unwrap();
    let good = signed_message(&b, &a, &room, &bob.user_id, &prev, "good").await;
    let mut forged = signed_message(&b, &a, &room, &bob.user_id, &prev, "forged").await;
    forged.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(7u32.into()));
    let (good_id, forged_id) = (event_id_of(&good), event_id_of(&forged));
    let to_device = json!({ "edu_type": "m.direct_to_device", "content": {
        "sender": bob.user_id, "type": "m.test", "message_id": "m1",
        "messages": { &alice.user_id: { "*": { "n": 1 } } },
    }});
    let pdus = vec![serde_json::to_value(&good).unwrap(), serde_json::to_value(&forged).unwrap()];
    let answer = send_txn(&b, &a, "t1", pdus.clone(), vec![to_device.clone()]).await;
    assert_eq!(answer["pdus"][&good_id], json!({}), "{answer}");
    assert!(answer["pdus"][&forged_id]["error"].as_str().unwrap().contains("signature"), "{answer}");
    assert!(plexus::storage::events::get(&a.state.db, &forged_id).await.unwrap().is_none());
    assert!(synced_bodies(&alice, &room_id).await.contains(&"good".into()));

    // The same transaction again: the same answer, nothing applied twice; the same
    // to-device message in another transaction is not delivered twice either.
    assert_eq!(send_txn(&b, &a, "t1", pdus, vec![to_device.clone()]).await, answer);
    send_txn(&b, &a, "t2", vec![], vec![to_device]).await;
    let sync = alice.sync("timeout=0").await;
    let messages = sync["to_device"]["events"].as_array().unwrap();
    assert_eq!(messages.len(), 1, "{messages:?}");
    assert_eq!(messages[0], json!({ "sender": bob.user_id, "type": "m.test", "content": { "n": 1 } }));

    // A server may not speak for another server's users, nor send more than 50 PDUs.
    let spoofed = json!({ "edu_type": "m.typing", "content": {
        "room_id": room_id, "user_id": alice.user_id, "typing": true } });
    send_txn(&b, &a, "t3", vec![], vec![spoofed]).await;
    assert!(a.state.typing.typing_in(&room).is_empty());
    let body = json!({ "origin": b.server_name, "origin_server_ts": 0, "pdus": vec![json!({}); 51] });
    let path = "/_matrix/federation/v1/send/t4";
    let refused = client::request::<Value>(&b.state, &name_of(&a), Method::PUT, path, Some(&body)).await;
    assert!(refused.is_err(), "{refused:?}");
}

/// A server may not send events of another server's users: B signs a message as alice@A
/// (who is in the room), and A refuses it without storing it.
#[tokio::test]
async fn events_of_another_servers_users_are_refused() {
    let Shared { a, b, alice, room_id, .. } = shared_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    let prev = plexus::storage::rooms::extremities(&a.state.db, &room_id).await.unwrap();
    let spoofed = signed_message(&b, &a, &room, &alice.user_id, &prev, "spoofed").await;
    let spoofed_id = event_id_of(&spoofed);
    let answer = send_txn(&b, &a, "spoof1", vec![serde_json::to_value(&spoofed).unwrap()], vec![]).await;
    assert!(answer["pdus"][&spoofed_id]["error"].is_string(), "{answer}");
    assert!(plexus::storage::events::get(&a.state.db, &spoofed_id).await.unwrap().is_none());
    assert!(!synced_bodies(&alice, &room_id).await.contains(&"spoofed".into()));
}

#[tokio::test]
async fn a_gap_is_filled_with_get_missing_events() {
    let Shared { a, b, alice, bob, room_id } = shared_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    // B has three events A never heard of, and sends A only the last one.
    let mut prev = plexus::storage::rooms::extremities(&b.state.db, &room_id).await.unwrap();
    let mut events = Vec::new();
    for body in ["one", "two", "three"] {
        let event = signed_message(&b, &b, &room, &bob.user_id, &prev, body).await;
        prev = vec![event_id_of(&event)];
        let outcome = inbound::receive(&b.state, &room, event.clone(), &key_map(&b)).await.unwrap();
        assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
        events.push(event);
    }
    let third = events.pop().unwrap();
    let ids: Vec<String> = events.iter().map(event_id_of).collect();
    let third_id = event_id_of(&third);
    let answer = send_txn(&b, &a, "gap", vec![serde_json::to_value(&third).unwrap()], vec![]).await;
    assert_eq!(answer["pdus"][&third_id], json!({}), "{answer}");
    for id in &ids {
        assert!(plexus::storage::events::get(&a.state.db, id).await.unwrap().is_some(), "{id} fetched");
    }
    let bodies = synced_bodies(&alice, &room_id).await;
    let tail: Vec<&str> = bodies.iter().rev().take(3).rev().map(String::as_str).collect();
    assert_eq!(tail, ["one", "two", "three"]);
}

#[tokio::test]
async fn events_are_served_to_servers_in_the_room_only() {
    let Shared { a, b, alice, room_id, .. } = shared_room().await;
    let c = fed_server("127.0.0.3").await;
    let event_id = alice.send_text(&room_id, "secret").await;
    let state_ids = format!("/_matrix/federation/v1/state_ids/{}?event_id={}", enc(&room_id), enc(&event_id));
    let event = format!("/_matrix/federation/v1/event/{}", enc(&event_id));

    // B is in the room: the event as signed by A, the state at it with its auth chain.
    let answer: Value = client::request(&b.state, &name_of(&a), Method::GET, &event, None).await.unwrap();
    assert_eq!(answer["origin"], a.server_name);
    let pdu = &answer["pdus"][0];
    assert_eq!(pdu["content"]["body"], "secret");
    assert!(pdu.get("unsigned").is_none());
    let object: CanonicalJsonObject = serde_json::from_value(pdu.clone()).unwrap();
    ruma::signatures::verify_event(&key_map(&a), &object, &RoomVersionId::V11.rules().unwrap()).unwrap();
    let ids: Value = client::request(&b.state, &name_of(&a), Method::GET, &state_ids, None).await.unwrap();
    let pdu_ids = ids["pdu_ids"].as_array().unwrap();
    let current = plexus::rooms::current_state(&a.state, &RoomId::parse(&room_id).unwrap()).await.unwrap();
    assert_eq!(pdu_ids.len(), current.len(), "{ids}");
    assert!(!ids["auth_chain_ids"].as_array().unwrap().is_empty());
    let missing = json!({ "earliest_events": [], "latest_events": [event_id], "limit": 3 });
    let path = format!("/_matrix/federation/v1/get_missing_events/{}", enc(&room_id));
    let gap: Value = client::request(&b.state, &name_of(&a), Method::POST, &path, Some(&missing)).await.unwrap();
    assert_eq!(gap["events"].as_array().unwrap().len(), 3, "{gap}");
    let backfill = format!("/_matrix/federation/v1/backfill/{}?v={}&limit=2", enc(&room_id), enc(&event_id));
    let back: Value = client::request(&b.state, &name_of(&a), Method::GET, &backfill, None).await.unwrap();
    assert_eq!(back["pdus"][0]["content"]["body"], "secret");
    assert_eq!(back["pdus"].as_array().unwrap().len(), 2);

    // C never was: 403 M_FORBIDDEN.
    for (method, path, body) in
        [(Method::GET, &event, None), (Method::GET, &state_ids, None), (Method::POST, &path, Some(&missing))]
    {
        let refused = client::request::<Value>(&c.state, &name_of(&a), method, path, body).await;
        match refused {
            Err(client::FederationError::Remote { status, errcode, .. }) => {
                assert_eq!((status.as_u16(), errcode.as_str()), (403, "M_FORBIDDEN"), "{path}");
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn receipts_and_device_list_changes_go_across() {
    let Shared { a, b, alice, bob, room_id } = shared_room().await;
    let event_id = alice.send_text(&room_id, "read me").await;
    wait_for("the message at B", async || synced_bodies(&bob, &room_id).await.contains(&"read me".into())).await;
    let receipt = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room_id), enc(&event_id));
    bob.post(&receipt, json!({})).await.ok();
    let receipts = |server: &TestServer| {
        let (db, room_id) = (server.state.db.clone(), room_id.clone());
        async move { plexus::storage::receipts::latest(&db, &room_id, "@nobody:x", i64::MAX).await.unwrap() }
    };
    wait_for("bob's receipt at A", async || {
        receipts(&a).await.get(&event_id).is_some_and(|r| r["m.read"].get(&bob.user_id).is_some())
    })
    .await;
    let sync = alice.sync("timeout=0").await;
    let ephemeral = sync["rooms"]["join"][&room_id]["ephemeral"]["events"].to_string();
    assert!(ephemeral.contains(&bob.user_id) && ephemeral.contains("m.receipt"), "{ephemeral}");

    // Bob renames his device: alice's next sync lists him in device_lists.changed.
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let device = format!("/_matrix/client/v3/devices/{}", enc(&bob.device_id));
    bob.put(&device, json!({ "display_name": "phone" })).await.ok();
    wait_for("bob's device change at A", async || {
        let sync = alice.sync(&format!("timeout=0&since={since}")).await;
        sync["device_lists"]["changed"].as_array().is_some_and(|c| c.iter().any(|u| *u == bob.user_id.as_str()))
    })
    .await;
    // A device list update for a user of another server is refused.
    let since = alice.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let spoofed = json!({ "edu_type": "m.device_list_update", "content": {
        "user_id": alice.user_id, "device_id": "X", "stream_id": 1, "prev_id": [] } });
    send_txn(&b, &a, "spoof", vec![], vec![spoofed]).await;
    let sync = alice.sync(&format!("timeout=0&since={since}")).await;
    assert!(sync["device_lists"]["changed"].as_array().is_none_or(Vec::is_empty), "{sync}");
}

#[tokio::test]
async fn a_server_denied_by_the_acl_is_refused() {
    let Shared { a, b, alice, bob, room_id } = shared_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    let acl = json!({ "allow": ["*"], "deny": ["127.0.0.2"], "allow_ip_literals": true });
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.server_acl", enc(&room_id));
    alice.put(&path, acl).await.ok();
    let prev = plexus::storage::rooms::extremities(&a.state.db, &room_id).await.unwrap();
    let message = signed_message(&b, &a, &room, &bob.user_id, &prev, "denied").await;
    let message_id = event_id_of(&message);
    let typing = json!({ "edu_type": "m.typing", "content": {
        "room_id": room_id, "user_id": bob.user_id, "typing": true } });
    let answer = send_txn(&b, &a, "acl", vec![serde_json::to_value(&message).unwrap()], vec![typing]).await;
    assert!(answer["pdus"][&message_id]["error"].as_str().unwrap().contains("ACL"), "{answer}");
    assert!(plexus::storage::events::get(&a.state.db, &message_id).await.unwrap().is_none());
    assert!(a.state.typing.typing_in(&room).is_empty());
    let event = format!("/_matrix/federation/v1/event/{}", enc(&prev[0]));
    let refused = client::request::<Value>(&b.state, &name_of(&a), Method::GET, &event, None).await;
    assert!(
        matches!(refused, Err(client::FederationError::Remote { ref errcode, .. }) if errcode == "M_FORBIDDEN"),
        "{refused:?}"
    );
}

#[tokio::test]
async fn typing_and_to_device_go_both_ways() {
    let Shared { a, b, alice, bob, room_id } = shared_room().await;
    let room = RoomId::parse(&room_id).unwrap();
    let typing = |user: &TestUser| format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room_id), enc(&user.user_id));
    alice.put(&typing(&alice), json!({ "typing": true, "timeout": 30000 })).await.ok();
    wait_for("alice typing at B", async || b.state.typing.typing_in(&room).iter().any(|u| *u == alice.user_id)).await;
    let sync = bob.sync("timeout=0").await;
    let ephemeral = &sync["rooms"]["join"][&room_id]["ephemeral"]["events"];
    assert!(ephemeral.to_string().contains(&alice.user_id), "{ephemeral}");
    bob.put(&typing(&bob), json!({ "typing": true, "timeout": 30000 })).await.ok();
    wait_for("bob typing at A", async || a.state.typing.typing_in(&room).iter().any(|u| *u == bob.user_id)).await;
    bob.put(&typing(&bob), json!({ "typing": false })).await.ok();
    wait_for("bob stopped at A", async || !a.state.typing.typing_in(&room).iter().any(|u| *u == bob.user_id)).await;
    // A notification that expires at its server ends at the others too (not after their 60 s).
    bob.put(&typing(&bob), json!({ "typing": true, "timeout": 1500 })).await.ok();
    wait_for("bob typing at A again", async || a.state.typing.typing_in(&room).iter().any(|u| *u == bob.user_id)).await;
    wait_for("bob's expiry at A", async || !a.state.typing.typing_in(&room).iter().any(|u| *u == bob.user_id)).await;

    let send = |from: &TestUser, to: &TestUser, txn: &str| {
        let path = format!("/_matrix/client/v3/sendToDevice/m.test/{txn}");
        let body = json!({ "messages": { &to.user_id: { &to.device_id: { "from": from.user_id } } } });
        let from = from.clone();
        async move { from.put(&path, body).await.ok() }
    };
    let inbox = |user: &TestUser| {
        let user = user.clone();
        async move { user.sync("timeout=0").await["to_device"]["events"].as_array().cloned().unwrap_or_default() }
    };
    send(&alice, &bob, "d1").await;
    wait_for("alice's message at bob's device", async || !inbox(&bob).await.is_empty()).await;
    assert_eq!(
        inbox(&bob).await[0],
        json!({ "sender": alice.user_id, "type": "m.test", "content": { "from": alice.user_id } })
    );
    send(&bob, &alice, "d1").await;
    wait_for("bob's message at alice's device", async || !inbox(&alice).await.is_empty()).await;
    assert_eq!(inbox(&alice).await[0]["content"]["from"], bob.user_id);
}
