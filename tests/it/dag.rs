//! The event DAG: received PDUs go through the spec's checks, forks merge by state
//! resolution, and the result does not depend on the order of arrival.

use std::sync::Arc;

use plexus::rooms::inbound::{self, Outcome};
use ruma::signatures::PublicKeyMap;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc};

/// The state event IDs a new event by `sender` needs as auth events.
async fn auth_ids(server: &TestServer, room: &RoomId, sender: &str, version: &RoomVersionId) -> Vec<String> {
    let state = plexus::rooms::current_state(&server.state, room).await.unwrap();
    let mut keys = vec![("m.room.power_levels", ""), ("m.room.member", sender)];
    if !version.rules().unwrap().authorization.room_create_event_id_as_room_id {
        keys.push(("m.room.create", ""));
    }
    keys.iter().filter_map(|(t, k)| state.get(&((*t).into(), (*k).to_owned())).map(|id| id.to_string())).collect()
}

/// A room of a test server, to build PDUs in.
struct Fixture<'a> {
    server: &'a TestServer,
    room: &'a RoomId,
    version: &'a RoomVersionId,
}

/// A state event (empty state key) signed by the server's own key, built by hand as another
/// server would: (sender, type, content), prev events, depth, origin_server_ts.
async fn signed_pdu(
    f: &Fixture<'_>,
    (sender, kind, content): (&TestUser, &str, Value),
    prev: &[String],
    depth: u64,
    ts: u64,
) -> CanonicalJsonObject {
    let (server, room, version) = (f.server, f.room, f.version);
    let value = json!({
        "room_id": room,
        "sender": sender.user_id,
        "type": kind,
        "state_key": "",
        "content": content,
        "prev_events": prev,
        "auth_events": auth_ids(server, room, &sender.user_id, version).await,
        "depth": depth,
        "origin_server_ts": ts,
    });
    let CanonicalJsonValue::Object(mut object) = CanonicalJsonValue::try_from(value).unwrap() else { unreachable!() };
    let rules = version.rules().unwrap();
    ruma::signatures::hash_and_sign_event(
        &server.server_name,
        server.state.server_key.pair(),
        &mut object,
        &rules.redaction,
    )
    .unwrap();
    object
}

fn keys_of(server: &TestServer) -> PublicKeyMap {
    let key = &server.state.server_key;
    let set = [(key.key_id.clone(), ruma::serde::Base64::parse(&key.public_key_b64).unwrap())].into_iter().collect();
    [(server.server_name.clone(), set)].into_iter().collect()
}

async fn topic_of(user: &TestUser, room: &str) -> String {
    let r = user.get(&format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room))).await.ok();
    r["topic"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn forks_resolve_to_the_same_state_whatever_the_order_of_arrival() {
    for version in [RoomVersionId::V10, RoomVersionId::V12] {
        let mut outcomes = Vec::new();
        for order in [[0usize, 1], [1, 0]] {
            let server = TestServer::start().await;
            let alice = server.register("alice").await;
            let room_id = alice.create_room(json!({ "room_version": version.as_str(), "topic": "start" })).await;
            let room = RoomId::parse(&room_id).unwrap();
            let extremities = plexus::storage::rooms::extremities(&server.state.db, room.as_str()).await.unwrap();
            let fx = Fixture { server: &server, room: &room, version: &version };
            // Two concurrent topic changes on the same parent: a fork.
            let mut fork = Vec::new();
            for (i, topic) in ["left", "right"].iter().enumerate() {
                let event = (&alice, "m.room.topic", json!({ "topic": topic }));
                let pdu = signed_pdu(&fx, event, &extremities, 100, 1_000 + i as u64).await;
                fork.push(pdu);
            }
            let keys = keys_of(&server);
            for i in order {
                let outcome = inbound::receive(&server.state, &room, fork[i].clone(), &keys).await.unwrap();
                assert!(matches!(outcome, Outcome::Accepted(_)), "{outcome:?}");
            }
            let extremities = plexus::storage::rooms::extremities(&server.state.db, room.as_str()).await.unwrap();
            assert_eq!(extremities.len(), 2, "the fork leaves two forward extremities");
            // A local message now merges the fork.
            alice.send_text(&room_id, "merge").await;
            let extremities = plexus::storage::rooms::extremities(&server.state.db, room.as_str()).await.unwrap();
            assert_eq!(extremities.len(), 1);
            outcomes.push(topic_of(&alice, &room_id).await);

            // Resolution itself is order-independent.
            let mut states = Vec::new();
            for pdu in &fork {
                let id = inbound::event_id_of(pdu, &version.rules().unwrap()).unwrap();
                let group = plexus::storage::events::get(&server.state.db, id.as_str())
                    .await
                    .unwrap()
                    .unwrap()
                    .state_group
                    .unwrap();
                states.push(plexus::rooms::state::load(&server.state, group).await.unwrap());
            }
            let ab = plexus::rooms::resolve::resolve(&server.state, &version, &states).await.unwrap();
            states.reverse();
            let ba = plexus::rooms::resolve::resolve(&server.state, &version, &states).await.unwrap();
            assert_eq!(ab, ba);
            let current = plexus::rooms::current_state(&server.state, &room).await.unwrap();
            assert_eq!(Arc::new(ab), current);
        }
        assert_eq!(outcomes[0], outcomes[1], "v{version}: {outcomes:?}");
        // Equal power and later timestamp: the later event wins in both orders.
        assert_eq!(outcomes[0], "right");
    }
}

#[tokio::test]
async fn bad_signatures_and_unauthorised_events_are_rejected() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let mallory = server.register("mallory").await;
    let version = RoomVersionId::V11;
    let room_id = alice.create_room(json!({ "room_version": "11" })).await;
    let room = RoomId::parse(&room_id).unwrap();
    let prev = plexus::storage::rooms::extremities(&server.state.db, room.as_str()).await.unwrap();
    let keys = keys_of(&server);
    let fx = Fixture { server: &server, room: &room, version: &version };

    let mut forged = signed_pdu(&fx, (&alice, "m.room.topic", json!({ "topic": "x" })), &prev, 50, 5).await;
    forged.insert("origin_server_ts".into(), CanonicalJsonValue::Integer(6u32.into()));
    let outcome = inbound::receive(&server.state, &room, forged, &keys).await.unwrap();
    assert!(matches!(outcome, Outcome::Rejected(ref r) if r.contains("signature")), "{outcome:?}");

    // Mallory is not in the room: her event fails auth.
    let intruder = signed_pdu(&fx, (&mallory, "m.room.topic", json!({ "topic": "mine" })), &prev, 50, 7).await;
    let outcome = inbound::receive(&server.state, &room, intruder, &keys).await.unwrap();
    assert!(matches!(outcome, Outcome::Rejected(_)), "{outcome:?}");

    let unknown = vec![OwnedEventId::try_from("$unknown").unwrap().to_string()];
    let orphan = signed_pdu(&fx, (&alice, "m.room.topic", json!({ "topic": "?" })), &unknown, 50, 8).await;
    let outcome = inbound::receive(&server.state, &room, orphan.clone(), &keys).await.unwrap();
    assert!(matches!(outcome, Outcome::MissingEvents(ref m) if m.len() == 1), "{outcome:?}");

    let good = signed_pdu(&fx, (&alice, "m.room.topic", json!({ "topic": "fine" })), &prev, 50, 9).await;
    assert!(matches!(inbound::receive(&server.state, &room, good.clone(), &keys).await.unwrap(), Outcome::Accepted(_)));
    assert!(matches!(inbound::receive(&server.state, &room, good, &keys).await.unwrap(), Outcome::Duplicate(_)));
    assert_eq!(topic_of(&alice, &room_id).await, "fine");
}
