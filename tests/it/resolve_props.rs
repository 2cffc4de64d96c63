//! Property tests of the event DAG (proptest): random DAGs of concurrent state changes
//! (power levels, join rules, membership, topic, name) built by hand as a remote server
//! would, received through `rooms::inbound::receive` in two different orders of arrival.
//! Whatever the order, every event gets the same state, the DAG's tips resolve to the same
//! state, and no event is admitted from a member whose power is below what its type needs.
//!
//! `PLEXUS_PROPTEST_CASES` raises the case count (default 12 per room version, a few
//! seconds).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use plexus::rooms::inbound::{self, Outcome};
use plexus::rooms::state::StateMap;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use ruma::signatures::PublicKeyMap;
use ruma::{CanonicalJsonObject, CanonicalJsonValue, OwnedEventId, RoomId, RoomVersionId};
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser};

/// One generated event: what it does, who sends it, and which earlier events (indices into
/// the events accepted so far, taken modulo their count) are its prev events.
#[derive(Debug, Clone)]
struct Step {
    op: Op,
    sender: usize,
    prevs: Vec<usize>,
}

#[derive(Debug, Clone)]
enum Op {
    Topic,
    Name,
    JoinRules {
        public: bool,
    },
    /// New levels for bob and carol (0 or 50 each).
    Power {
        bob: bool,
        carol: bool,
    },
    Leave,
    Join,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Topic),
        Just(Op::Name),
        any::<bool>().prop_map(|public| Op::JoinRules { public }),
        (any::<bool>(), any::<bool>()).prop_map(|(bob, carol)| Op::Power { bob, carol }),
        Just(Op::Leave),
        Just(Op::Join),
    ]
}

fn steps() -> impl Strategy<Value = (Vec<Step>, Vec<usize>)> {
    let step = (op(), 0usize..3, prop::collection::vec(any::<usize>(), 1..=2)).prop_map(|(op, sender, prevs)| Step {
        op,
        sender,
        prevs,
    });
    // The second vector picks, at each point of the second run, which ready event arrives next.
    (prop::collection::vec(step, 3..10), prop::collection::vec(any::<usize>(), 10))
}

/// A label for an event that is the same in both rooms: `base <type> <key>` for the
/// room's initial events, `#n` for generated ones.
type Labels = HashMap<OwnedEventId, String>;

struct Room {
    id: ruma::OwnedRoomId,
    labels: Labels,
    /// Label -> event ID, for generated events that were stored.
    ids: HashMap<String, OwnedEventId>,
    base_tip: OwnedEventId,
}

const PL_EVENTS: [(&str, i64); 5] = [
    ("m.room.topic", 50),
    ("m.room.name", 0),
    ("m.room.join_rules", 50),
    ("m.room.power_levels", 100),
    ("m.room.history_visibility", 100),
];

fn power_content(users: &[(&TestUser, i64)]) -> Value {
    let users: serde_json::Map<String, Value> = users.iter().map(|(u, l)| (u.user_id.clone(), json!(l))).collect();
    let events: serde_json::Map<String, Value> = PL_EVENTS.iter().map(|(t, l)| ((*t).to_owned(), json!(l))).collect();
    json!({ "users": users, "users_default": 0, "events": events, "events_default": 0, "state_default": 50,
            "ban": 50, "kick": 50, "redact": 50, "invite": 0 })
}

/// A room of alice (100), bob (50) and carol (0), all joined.
async fn new_room(server: &TestServer, users: &[TestUser; 3], version: &RoomVersionId) -> Room {
    let [alice, bob, carol] = users;
    let body = json!({
        "room_version": version.as_str(),
        "preset": "public_chat",
        "power_level_content_override": power_content(&[(alice, 100), (bob, 50)]),
    });
    let room_id = alice.create_room(body).await;
    bob.join(&room_id).await.ok();
    carol.join(&room_id).await.ok();
    let server_state = &server.state;
    let id = RoomId::parse(&room_id).unwrap();
    let state = plexus::rooms::current_state(server_state, &id).await.unwrap();
    let labels = state.iter().map(|((t, k), id)| (id.clone(), format!("base {t} {k}"))).collect();
    let tips = plexus::storage::rooms::extremities(&server_state.db, &room_id).await.unwrap();
    assert_eq!(tips.len(), 1);
    Room { id, labels, ids: HashMap::new(), base_tip: OwnedEventId::try_from(tips[0].as_str()).unwrap() }
}

/// The state after a stored event, in labels.
async fn state_after(server: &TestServer, event: &OwnedEventId) -> Arc<StateMap> {
    let row = plexus::storage::events::get(&server.state.db, event.as_str()).await.unwrap().unwrap();
    plexus::rooms::state::load(&server.state, row.state_group.unwrap()).await.unwrap()
}

fn labelled(state: &StateMap, labels: &Labels) -> BTreeMap<(String, String), String> {
    state
        .iter()
        .map(|((t, k), id)| ((t.to_string(), k.clone()), labels.get(id).cloned().unwrap_or_else(|| id.to_string())))
        .collect()
}

/// What the sender's power level allows, read from the state before the event: `false`
/// when the event's type needs more than the sender has (membership changes of oneself
/// need no power; from room version 12 the room's creator has unlimited power).
async fn has_power(server: &TestServer, version: &RoomVersionId, state: &StateMap, sender: &str, kind: &str) -> bool {
    if kind == "m.room.member" {
        return true;
    }
    if version.rules().unwrap().authorization.explicitly_privilege_room_creators {
        let create = &state[&("m.room.create".into(), String::new())];
        if plexus::rooms::get_pdu(&server.state, create).await.unwrap().unwrap().sender == sender {
            return true;
        }
    }
    let id = &state[&("m.room.power_levels".into(), String::new())];
    let levels = plexus::rooms::get_pdu(&server.state, id).await.unwrap().unwrap().content_value();
    let own = levels["users"][sender].as_i64().unwrap_or(levels["users_default"].as_i64().unwrap_or(0));
    let needed = levels["events"][kind].as_i64().unwrap_or(levels["state_default"].as_i64().unwrap_or(50));
    own >= needed
}

struct Built {
    object: CanonicalJsonObject,
    /// The resolved state before the event (the same whatever the order, if resolution is sound).
    state_before: StateMap,
    kind: &'static str,
}

/// Builds generated event `n` of `step` in `room` on top of prev events given by label.
async fn build(
    server: &TestServer,
    users: &[TestUser; 3],
    version: &RoomVersionId,
    room: &Room,
    (n, step): (usize, &Step),
    prev_labels: &[String],
) -> Built {
    let prev_ids: Vec<OwnedEventId> =
        prev_labels.iter().map(|l| if l == "base" { room.base_tip.clone() } else { room.ids[l].clone() }).collect();
    let mut states = Vec::new();
    for id in &prev_ids {
        states.push(state_after(server, id).await);
    }
    let state_before = plexus::rooms::resolve::resolve(&server.state, version, &states).await.unwrap();
    let [alice, bob, carol] = users;
    let sender = match step.op {
        // Membership changes are carol's or bob's own.
        Op::Leave | Op::Join => &users[1 + step.sender % 2],
        _ => &users[step.sender],
    };
    let (kind, state_key, content) = match &step.op {
        Op::Topic => ("m.room.topic", String::new(), json!({ "topic": format!("topic {n}") })),
        Op::Name => ("m.room.name", String::new(), json!({ "name": format!("name {n}") })),
        Op::JoinRules { public } => {
            ("m.room.join_rules", String::new(), json!({ "join_rule": if *public { "public" } else { "invite" } }))
        }
        Op::Power { bob: b, carol: c } => (
            "m.room.power_levels",
            String::new(),
            power_content(&[(alice, 100), (bob, if *b { 50 } else { 0 }), (carol, if *c { 50 } else { 0 })]),
        ),
        Op::Leave => ("m.room.member", sender.user_id.clone(), json!({ "membership": "leave" })),
        Op::Join => ("m.room.member", sender.user_id.clone(), json!({ "membership": "join" })),
    };
    let mut auth_keys = vec![("m.room.power_levels", String::new()), ("m.room.member", sender.user_id.clone())];
    if !version.rules().unwrap().authorization.room_create_event_id_as_room_id {
        auth_keys.push(("m.room.create", String::new()));
    }
    if matches!(step.op, Op::Join) {
        auth_keys.push(("m.room.join_rules", String::new()));
    }
    let auth: Vec<String> = auth_keys
        .iter()
        .filter_map(|(t, k)| state_before.get(&((*t).into(), k.clone())).map(ToString::to_string))
        .collect();
    let value = json!({
        "room_id": room.id,
        "sender": sender.user_id,
        "type": kind,
        "state_key": state_key,
        "content": content,
        "prev_events": prev_ids,
        "auth_events": auth,
        "depth": 100 + n,
        // Distinct timestamps: ties never fall back to event IDs, which differ between rooms.
        "origin_server_ts": 1_000_000 + n as u64 * 10,
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
    Built { object, state_before, kind }
}

fn keys_of(server: &TestServer) -> PublicKeyMap {
    let key = &server.state.server_key;
    let set = [(key.key_id.clone(), ruma::serde::Base64::parse(&key.public_key_b64).unwrap())].into_iter().collect();
    [(server.server_name.clone(), set)].into_iter().collect()
}

/// What happened to each generated event in one room.
#[derive(Default)]
struct Run {
    stored: HashSet<String>,
    soft_failed: HashSet<String>,
    rejected: HashSet<String>,
    state_after: BTreeMap<String, BTreeMap<(String, String), String>>,
}

/// Receives one event, records its fate, and checks the power property.
async fn deliver(
    server: &TestServer,
    users: &[TestUser; 3],
    version: &RoomVersionId,
    room: &mut Room,
    run: &mut Run,
    (n, step): (usize, &Step),
    prevs: &[String],
) -> Result<(), TestCaseError> {
    let built = build(server, users, version, room, (n, step), prevs).await;
    let sender = built.object["sender"].as_str().unwrap().to_owned();
    let label = format!("#{n}");
    let outcome = inbound::receive(&server.state, &room.id, built.object, &keys_of(server)).await.unwrap();
    let allowed = has_power(server, version, &built.state_before, &sender, built.kind).await;
    let id = match outcome {
        Outcome::Accepted(id) => id,
        Outcome::SoftFailed(id) => {
            run.soft_failed.insert(label.clone());
            id
        }
        Outcome::Rejected(_) => {
            run.rejected.insert(label);
            return Ok(());
        }
        other => return Err(TestCaseError::fail(format!("#{n}: unexpected {other:?}"))),
    };
    prop_assert!(allowed, "#{n} ({}) by {sender} admitted without the power for it", built.kind);
    room.labels.insert(id.clone(), label.clone());
    room.ids.insert(label.clone(), id.clone());
    let after = state_after(server, &id).await;
    run.state_after.insert(label.clone(), labelled(&after, &room.labels));
    run.stored.insert(label);
    Ok(())
}

async fn case(
    server: &TestServer,
    users: &[TestUser; 3],
    version: &RoomVersionId,
    (steps, picks): (Vec<Step>, Vec<usize>),
) -> Result<(), TestCaseError> {
    // First run: events arrive in generation order; each one's prevs are picked among the
    // events stored so far, which fixes the DAG.
    let mut first = new_room(server, users, version).await;
    let mut run1 = Run::default();
    let mut dag: Vec<Vec<String>> = Vec::new();
    for (n, step) in steps.iter().enumerate() {
        let mut pool: Vec<String> = vec!["base".into()];
        pool.extend((0..n).map(|i| format!("#{i}")).filter(|l| run1.stored.contains(l)));
        let mut prevs: Vec<String> = step.prevs.iter().map(|p| pool[p % pool.len()].clone()).collect();
        prevs.sort();
        prevs.dedup();
        deliver(server, users, version, &mut first, &mut run1, (n, step), &prevs).await?;
        dag.push(prevs);
    }
    // Second run: the same DAG in another order (any event whose prevs are there may come next).
    let mut second = new_room(server, users, version).await;
    let mut run2 = Run::default();
    let mut pending: Vec<usize> = (0..steps.len()).collect();
    let mut pick = picks.iter().cycle();
    while !pending.is_empty() {
        let ready: Vec<usize> = pending
            .iter()
            .copied()
            .filter(|&n| dag[n].iter().all(|l| l == "base" || run2.stored.contains(l)))
            .collect();
        prop_assert!(!ready.is_empty(), "an event's prev events were never stored in the second run");
        let n = ready[pick.next().unwrap() % ready.len()];
        pending.retain(|&p| p != n);
        deliver(server, users, version, &mut second, &mut run2, (n, &steps[n]), &dag[n]).await?;
    }
    prop_assert_eq!(&run1.rejected, &run2.rejected, "rejection depends only on the DAG");
    prop_assert_eq!(&run1.state_after, &run2.state_after, "the state after each event depends only on the DAG");

    // The DAG's tips resolve to the same state in both rooms, in any order of the states.
    let referenced: HashSet<&String> = dag.iter().flatten().collect();
    let tips: Vec<&String> = run1.stored.iter().filter(|l| !referenced.contains(l)).collect();
    let mut resolved = Vec::new();
    for room in [&first, &second] {
        let mut states = Vec::new();
        for tip in &tips {
            states.push(state_after(server, &room.ids[tip.as_str()]).await);
        }
        for _ in 0..2 {
            let state = plexus::rooms::resolve::resolve(&server.state, version, &states).await.unwrap();
            resolved.push(labelled(&state, &room.labels));
            states.reverse();
        }
    }
    prop_assert!(resolved.windows(2).all(|w| w[0] == w[1]), "tips resolve differently: {resolved:#?}");
    // Without soft failures both rooms have the same forward extremities, so the same
    // current state.
    if run1.soft_failed.is_empty() && run2.soft_failed.is_empty() {
        let a = plexus::rooms::current_state(&server.state, &first.id).await.unwrap();
        let b = plexus::rooms::current_state(&server.state, &second.id).await.unwrap();
        prop_assert_eq!(labelled(&a, &first.labels), labelled(&b, &second.labels));
    }
    Ok(())
}

fn cases() -> u32 {
    std::env::var("PLEXUS_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(12)
}

fn check_version(version: RoomVersionId) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (server, users) = rt.block_on(async {
        let server = TestServer::start().await;
        let users = [server.register("alice").await, server.register("bob").await, server.register("carol").await];
        (server, users)
    });
    let config = ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() };
    let mut runner = TestRunner::new(config);
    let result = runner.run(&steps(), |input| rt.block_on(case(&server, &users, &version, input)));
    rt.block_on(server.stop());
    if let Err(e) = result {
        panic!("{version}: {e}");
    }
}

#[test]
fn state_resolution_is_independent_of_arrival_order_v10() {
    check_version(RoomVersionId::V10);
}

#[test]
fn state_resolution_is_independent_of_arrival_order_v12() {
    check_version(RoomVersionId::V12);
}
