//! Pushers and push gateways: `/pushers`, delivery to a gateway served by the test on
//! loopback (one notify per notifying event with its counts, retries, badge updates after a
//! receipt, a restart), rejected pushkeys and logged-out devices removing pushers.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc, wait_for};

const PUSHERS: &str = "/_matrix/client/v3/pushers";
const APP_ID: &str = "org.plexus.test";

/// A push gateway that records what it is sent: fails the first `failures` requests with a
/// 500 and rejects the pushkeys in `rejects`.
#[derive(Clone, Default)]
struct FakeGateway {
    /// (notification, whether it was answered with success)
    received: Arc<Mutex<Vec<(Value, bool)>>>,
    failures: Arc<AtomicUsize>,
    rejects: Arc<Mutex<HashSet<String>>>,
}

impl FakeGateway {
    async fn start() -> (Self, SocketAddr) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let gateway = FakeGateway::default();
        gateway.serve(listener);
        (gateway, addr)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let this = self.clone();
        let app = axum::Router::new().route(
            "/_matrix/push/v1/notify",
            axum::routing::post(move |axum::Json(body): axum::Json<Value>| {
                let this = this.clone();
                async move {
                    let fail = this.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                    let note = body["notification"].clone();
                    this.received.lock().unwrap().push((note.clone(), fail.is_err()));
                    if fail.is_ok() {
                        return (axum::http::StatusCode::INTERNAL_SERVER_ERROR, axum::Json(json!({})));
                    }
                    let rejects = this.rejects.lock().unwrap();
                    let rejected: Vec<&Value> = note["devices"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|d| &d["pushkey"])
                        .filter(|k| rejects.contains(k.as_str().unwrap()))
                        .collect();
                    (axum::http::StatusCode::OK, axum::Json(json!({ "rejected": rejected })))
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    /// The notifications answered with success.
    fn delivered(&self) -> Vec<Value> {
        self.received.lock().unwrap().iter().filter(|(_, ok)| *ok).map(|(n, _)| n.clone()).collect()
    }

    fn attempts(&self) -> usize {
        self.received.lock().unwrap().len()
    }

    /// The delivered notifications of events (badge updates left out).
    fn delivered_events(&self) -> Vec<Value> {
        self.delivered().into_iter().filter(|n| n.get("event_id").is_some()).collect()
    }
}

fn gateway_url(addr: SocketAddr) -> String {
    format!("http://{addr}/_matrix/push/v1/notify")
}

fn pusher(pushkey: &str, url: &str) -> Value {
    json!({
        "kind": "http", "app_id": APP_ID, "pushkey": pushkey, "app_display_name": "Test",
        "device_display_name": "phone", "lang": "en", "data": { "url": url, "custom": 7 },
    })
}

/// A server that retries failed pushes quickly.
async fn fast_retrying_server() -> TestServer {
    TestServer::start_with(|c| {
        c.push.initial_backoff_ms = 20;
        c.push.max_backoff_ms = 200;
    })
    .await
}

/// Alice and Bob alone in a room Bob joined uninvited (an invite would notify).
async fn two_in_a_room(server: &TestServer) -> (TestUser, TestUser, String) {
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({"preset": "public_chat"})).await;
    bob.join(&room).await.ok();
    (alice, bob, room)
}

async fn pushers(user: &TestUser) -> Vec<Value> {
    user.get(PUSHERS).await.ok()["pushers"].as_array().unwrap().clone()
}

#[tokio::test]
async fn pushers_are_set_listed_replaced_and_deleted() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";
    assert!(pushers(&bob).await.is_empty());
    let set = format!("{PUSHERS}/set");
    bob.post(&set, pusher("key1", url)).await.ok();
    let listed = pushers(&bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["pushkey"], "key1");
    assert_eq!(listed[0]["kind"], "http");
    assert_eq!(listed[0]["app_display_name"], "Test");
    assert_eq!(listed[0]["data"], json!({ "url": url, "custom": 7 }));

    // The same app ID and pushkey again: replaced, not added.
    let mut changed = pusher("key1", url);
    changed["data"]["format"] = json!("event_id_only");
    bob.post(&set, changed).await.ok();
    let listed = pushers(&bob).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["data"]["format"], "event_id_only");

    // Another user takes the pushkey: Bob's goes, unless `append`.
    carol.post(&set, pusher("key1", url)).await.ok();
    assert!(pushers(&bob).await.is_empty());
    bob.post(&set, dict_with(pusher("key1", url), "append", json!(true))).await.ok();
    assert_eq!(pushers(&bob).await.len(), 1);
    assert_eq!(pushers(&carol).await.len(), 1);

    // Deleting: kind null; deleting again is no error.
    let delete = json!({ "kind": null, "app_id": APP_ID, "pushkey": "key1" });
    bob.post(&set, delete.clone()).await.ok();
    bob.post(&set, delete).await.ok();
    assert!(pushers(&bob).await.is_empty());
    assert_eq!(pushers(&carol).await.len(), 1);

    // Bad pushers.
    let wrong_path = pusher("key2", "https://push.example.org/notify");
    bob.post(&set, wrong_path).await.assert_error(400, "M_INVALID_PARAM");
    bob.post(&set, pusher("key2", "ftp://push.example.org/_matrix/push/v1/notify"))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    let mut email = pusher("bob@example.org", url);
    email["kind"] = json!("email");
    bob.post(&set, email).await.assert_error(400, "M_INVALID_PARAM");
    let mut no_data = pusher("key2", url);
    no_data.as_object_mut().unwrap().remove("data");
    bob.post(&set, no_data).await.assert_error(400, "M_MISSING_PARAM");
    bob.post(
        &set,
        json!({ "kind": "http", "app_id": APP_ID, "pushkey": "k", "app_display_name": "a",
        "device_display_name": "d", "lang": "en", "data": {} }),
    )
    .await
    .assert_error(400, "M_MISSING_PARAM");
    bob.post(&set, json!({ "app_id": APP_ID, "pushkey": "k" })).await.assert_error(400, "M_MISSING_PARAM");
    bob.post(&set, dict_with(pusher("key2", url), "append", json!("yes"))).await.assert_error(400, "M_BAD_JSON");
    bob.post(&set, pusher(&"k".repeat(513), url)).await.assert_error(400, "M_INVALID_PARAM");
    assert!(pushers(&bob).await.is_empty());
}

fn dict_with(mut object: Value, key: &str, value: Value) -> Value {
    object[key] = value;
    object
}

#[tokio::test]
async fn each_notifying_event_is_pushed_once_with_its_counts_even_after_failures() {
    let server = fast_retrying_server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let (gateway, addr) = FakeGateway::start().await;
    gateway.failures.store(2, Ordering::SeqCst);
    bob.post(&format!("{PUSHERS}/set"), pusher("bobkey", &gateway_url(addr))).await.ok();

    let first = alice.send_text(&room, "one").await;
    let txn = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/mention", enc(&room));
    let mention = alice
        .put(&txn, json!({"msgtype": "m.text", "body": "bob!", "m.mentions": {"user_ids": [bob.user_id]}}))
        .await
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    wait_for("both pushes", async || gateway.delivered_events().len() >= 2).await;
    // Bob's own messages notify nobody.
    bob.send_text(&room, "mine").await;

    let notes = gateway.delivered_events();
    assert_eq!(notes.len(), 2, "{notes:#?}");
    // Two failed attempts, then one delivery per event.
    assert_eq!(gateway.attempts(), 4);
    let (one, two) = (&notes[0], &notes[1]);
    assert_eq!(one["event_id"], first.as_str());
    assert_eq!(one["room_id"], room.as_str());
    assert_eq!(one["type"], "m.room.message");
    assert_eq!(one["sender"], alice.user_id.as_str());
    assert_eq!(one["sender_display_name"], "alice");
    assert_eq!(one["content"]["body"], "one");
    assert_eq!(one["counts"], json!({ "unread": 1 }));
    // A one-to-one room plays a sound: high priority.
    assert_eq!(one["prio"], "high");
    let device = &one["devices"][0];
    assert_eq!(device["app_id"], APP_ID);
    assert_eq!(device["pushkey"], "bobkey");
    assert!(device["pushkey_ts"].as_u64().unwrap() > 1_600_000_000);
    // data is forwarded without the URL.
    assert_eq!(device["data"], json!({ "custom": 7 }));
    assert_eq!(device["tweaks"]["sound"], "default");
    assert_eq!(two["event_id"], mention.as_str());
    assert_eq!(two["counts"], json!({ "unread": 2 }));
    assert_eq!(two["devices"][0]["tweaks"]["highlight"], true);

    // A read receipt: a badge update without an event, and the counts are cleared.
    let receipt = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&mention));
    bob.post(&receipt, json!({})).await.ok();
    wait_for("the badge update", async || gateway.delivered().len() == 3).await;
    let badge = gateway.delivered().pop().unwrap();
    assert!(badge.get("event_id").is_none(), "{badge}");
    assert_eq!(badge["counts"], json!({ "unread": 0 }));
    assert_eq!(badge["devices"][0]["pushkey"], "bobkey");
    let body = bob.sync("timeout=0").await;
    assert_eq!(body["rooms"]["join"][&room]["unread_notifications"]["notification_count"], 0);

    // A muted room pushes nothing; unmuted, it pushes again (in order, so nothing came between).
    let rule = format!("/_matrix/client/v3/pushrules/global/room/{}", enc(&room));
    bob.put(&rule, json!({"actions": []})).await.ok();
    let muted = alice.send_text(&room, "muted").await;
    bob.delete(&rule, json!({})).await.ok();
    let heard = alice.send_text(&room, "heard").await;
    wait_for("the next push", async || gateway.delivered_events().len() == 3).await;
    let last = gateway.delivered_events().pop().unwrap();
    assert_eq!(last["event_id"], heard.as_str());
    assert!(!gateway.delivered().iter().any(|n| n["event_id"] == muted.as_str()));
    assert_eq!(last["counts"], json!({ "unread": 1 }));
}

#[tokio::test]
async fn event_id_only_pushers_get_no_event_content() {
    let server = fast_retrying_server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let (gateway, addr) = FakeGateway::start().await;
    let mut only_ids = pusher("bobkey", &gateway_url(addr));
    only_ids["data"]["format"] = json!("event_id_only");
    bob.post(&format!("{PUSHERS}/set"), only_ids).await.ok();
    let event = alice.send_text(&room, "secret").await;
    wait_for("the push", async || gateway.delivered_events().len() == 1).await;
    let note = &gateway.delivered_events()[0];
    assert_eq!(note["event_id"], event.as_str());
    assert_eq!(note["room_id"], room.as_str());
    assert_eq!(note["counts"], json!({ "unread": 1 }));
    for absent in ["content", "sender", "type", "sender_display_name"] {
        assert!(note.get(absent).is_none(), "{absent} in {note}");
    }
    assert_eq!(note["devices"][0]["data"], json!({ "custom": 7, "format": "event_id_only" }));
}

#[tokio::test]
async fn a_rejected_pushkey_removes_its_pusher() {
    let server = fast_retrying_server().await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    let (gateway, addr) = FakeGateway::start().await;
    gateway.rejects.lock().unwrap().insert("stale".to_owned());
    bob.post(&format!("{PUSHERS}/set"), pusher("stale", &gateway_url(addr))).await.ok();
    alice.send_text(&room, "for a stale device").await;
    wait_for("the pusher to go", async || pushers(&bob).await.is_empty()).await;
    alice.send_text(&room, "nobody hears").await;
    alice.send_text(&room, "nobody hears either").await;
    // Give a wrong push the time to arrive.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(gateway.attempts(), 1);
}

#[tokio::test]
async fn logging_out_removes_the_devices_pushers() {
    let server = TestServer::start().await;
    let bob = server.register("bob").await;
    let url = "https://push.example.org/_matrix/push/v1/notify";
    let login = server.login("bob", "password").await.ok();
    let phone = bob.with_token(login["access_token"].as_str().unwrap(), login["device_id"].as_str().unwrap());
    let set = format!("{PUSHERS}/set");
    phone.post(&set, pusher("phone", url)).await.ok();
    bob.post(&set, pusher("laptop", url)).await.ok();
    assert_eq!(pushers(&bob).await.len(), 2);
    phone.post("/_matrix/client/v3/logout", json!({})).await.ok();
    let left: Vec<Value> = pushers(&bob).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["pushkey"], "laptop");

    let login = server.login("bob", "password").await.ok();
    let tablet = bob.with_token(login["access_token"].as_str().unwrap(), login["device_id"].as_str().unwrap());
    tablet.post(&set, pusher("tablet", url)).await.ok();
    tablet.post("/_matrix/client/v3/logout/all", json!({})).await.ok();
    let login = server.login("bob", "password").await.ok();
    let again = bob.with_token(login["access_token"].as_str().unwrap(), login["device_id"].as_str().unwrap());
    assert!(pushers(&again).await.is_empty());
}

#[tokio::test]
async fn undelivered_pushes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_owned();
    let server = TestServer::start_with(|c| {
        if c.database.url.starts_with("sqlite") {
            c.database.url = format!("sqlite://{}/plexus.db", keep.display());
        }
        c.data_dir = keep.clone();
        c.push.initial_backoff_ms = 20;
        c.push.max_backoff_ms = 200;
    })
    .await;
    let (alice, bob, room) = two_in_a_room(&server).await;
    // A gateway address nobody listens on yet.
    let addr = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap();
    bob.post(&format!("{PUSHERS}/set"), pusher("bobkey", &gateway_url(addr))).await.ok();
    let event = alice.send_text(&room, "kept").await;
    let bob_pushers = plexus::storage::push::pushers(&server.state.db, &bob.user_id).await.unwrap();
    let queued = plexus::storage::push::next_push(&server.state.db, bob_pushers[0].id).await.unwrap();
    assert!(queued.is_some());

    let config = server.config.clone();
    server.stop().await;
    let gateway = FakeGateway::default();
    gateway.serve(tokio::net::TcpListener::bind(addr).await.unwrap());
    let restarted = plexus::AppState::build(config).await.unwrap();
    wait_for("delivery after the restart", async || gateway.delivered_events().len() == 1).await;
    assert_eq!(gateway.delivered_events()[0]["event_id"], event.as_str());
    assert_eq!(gateway.delivered_events()[0]["content"]["body"], "kept");
    drop(restarted);
}
