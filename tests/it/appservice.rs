//! Application services: an appservice served by the test on loopback gets the events of
//! its rooms in transactions (exactly once, through failures and a restart) and ephemeral
//! events; exclusive namespaces; `m.login.application_service` registration and login;
//! masquerading with `?user_id=`; ping; alias queries.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc};

const AS_TOKEN: &str = "as-secret";
const HS_TOKEN: &str = "hs-secret";

/// A transaction received: txnId, Authorization header, body, whether it was answered with success.
type Received = (String, String, Value, bool);

/// What the appservice was sent.
#[derive(Clone, Default)]
struct FakeAppservice {
    transactions: Arc<Mutex<Vec<Received>>>,
    pings: Arc<Mutex<Vec<(String, Value)>>>,
    alias_queries: Arc<Mutex<Vec<String>>>,
    user_queries: Arc<Mutex<Vec<String>>>,
    /// Transactions still to answer with a 500.
    failures: Arc<AtomicUsize>,
    /// The homeserver's base URL, to create the rooms of queried aliases.
    homeserver: Arc<Mutex<Option<String>>>,
}

impl FakeAppservice {
    fn serve(&self, listener: tokio::net::TcpListener) {
        use axum::extract::Path;
        use axum::http::{HeaderMap, StatusCode};
        use axum::routing::{get, post, put};
        let auth = |headers: &HeaderMap| {
            headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned()
        };
        let (t, p, q, u) = (self.clone(), self.clone(), self.clone(), self.clone());
        let app = axum::Router::new()
            .route(
                "/_matrix/app/v1/transactions/{txn}",
                put(move |Path(txn): Path<String>, headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                    let t = t.clone();
                    async move {
                        let fail = t.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                        t.transactions.lock().unwrap().push((txn, auth(&headers), body, fail.is_err()));
                        let status = if fail.is_ok() { StatusCode::INTERNAL_SERVER_ERROR } else { StatusCode::OK };
                        (status, axum::Json(json!({})))
                    }
                }),
            )
            .route(
                "/_matrix/app/v1/ping",
                post(move |headers: HeaderMap, axum::Json(body): axum::Json<Value>| {
                    let p = p.clone();
                    async move {
                        p.pings.lock().unwrap().push((auth(&headers), body));
                        axum::Json(json!({}))
                    }
                }),
            )
            .route(
                "/_matrix/app/v1/rooms/{alias}",
                get(move |Path(alias): Path<String>| {
                    let q = q.clone();
                    async move { q.query_alias(alias).await }
                }),
            )
            .route(
                "/_matrix/app/v1/users/{user}",
                get(move |Path(user): Path<String>| {
                    let u = u.clone();
                    async move { u.query_user(user).await }
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    }

    /// Creates the room of an alias of the form `#bridge_yes...` as the bot; 404 for others.
    async fn query_alias(&self, alias: String) -> axum::http::StatusCode {
        self.alias_queries.lock().unwrap().push(alias.clone());
        let localpart = alias[1..].split(':').next().unwrap().to_owned();
        if !localpart.starts_with("bridge_yes") {
            return axum::http::StatusCode::NOT_FOUND;
        }
        let base = self.homeserver.lock().unwrap().clone().unwrap();
        let created = reqwest::Client::new()
            .post(format!("{base}/_matrix/client/v3/createRoom"))
            .bearer_auth(AS_TOKEN)
            .json(&json!({ "room_alias_name": localpart }))
            .send()
            .await
            .unwrap();
        assert!(created.status().is_success());
        axum::http::StatusCode::OK
    }

    /// Registers users of the form `@bridge_yes...`; 404 for others.
    async fn query_user(&self, user: String) -> axum::http::StatusCode {
        self.user_queries.lock().unwrap().push(user.clone());
        let localpart = user[1..].split(':').next().unwrap().to_owned();
        if !localpart.starts_with("bridge_yes") {
            return axum::http::StatusCode::NOT_FOUND;
        }
        let base = self.homeserver.lock().unwrap().clone().unwrap();
        let body = json!({ "type": "m.login.application_service", "username": localpart, "inhibit_login": true });
        let registered = reqwest::Client::new()
            .post(format!("{base}/_matrix/client/v3/register"))
            .bearer_auth(AS_TOKEN)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert!(registered.status().is_success());
        axum::http::StatusCode::OK
    }

    /// The events of the transactions answered with success.
    fn delivered_events(&self) -> Vec<Value> {
        let txns = self.transactions.lock().unwrap();
        txns.iter().filter(|t| t.3).flat_map(|t| t.2["events"].as_array().unwrap().clone()).collect()
    }

    fn delivered_ephemeral(&self) -> Vec<Value> {
        let txns = self.transactions.lock().unwrap();
        txns.iter().filter(|t| t.3).flat_map(|t| t.2["ephemeral"].as_array().cloned().unwrap_or_default()).collect()
    }

    /// The IDs of the transactions that carried an event, in order of attempts.
    fn attempts_with(&self, event_id: &str) -> Vec<(String, bool)> {
        let txns = self.transactions.lock().unwrap();
        txns.iter()
            .filter(|t| t.2["events"].as_array().unwrap().iter().any(|e| e["event_id"] == event_id))
            .map(|t| (t.0.clone(), t.3))
            .collect()
    }
}

async fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for {what}");
}

/// Writes the registration of an appservice at `url` (or none) into `dir`.
fn registration(dir: &Path, id: &str, url: Option<SocketAddr>, as_token: &str) -> PathBuf {
    let url = url.map_or("null".to_owned(), |a| format!("\"http://{a}\""));
    let yaml = format!(
        "id: {id}\nurl: {url}\nas_token: \"{as_token}\"\nhs_token: \"{HS_TOKEN}\"\nsender_localpart: {id}bot\n\
         namespaces:\n  users: [{{exclusive: true, regex: \"@bridge_.*\"}}]\n  aliases: [{{exclusive: true, regex: \"#bridge_.*\"}}]\n  rooms: []\n\
         rate_limited: false\nreceive_ephemeral: true\npush_to_device: true\n"
    );
    let path = dir.join(format!("{id}.yaml"));
    std::fs::write(&path, yaml).unwrap();
    path
}

/// A server with the appservice `bridge` (served by the returned fake) and `nourl` (no URL).
async fn start(keep: &Path) -> (TestServer, FakeAppservice) {
    start_with(keep, |_| {}).await
}

async fn start_with(keep: &Path, adjust: impl FnOnce(&mut plexus::config::Config)) -> (TestServer, FakeAppservice) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let fake = FakeAppservice::default();
    fake.serve(listener);
    let files = vec![registration(keep, "bridge", Some(addr), AS_TOKEN), registration(keep, "nourl", None, "as-nourl")];
    let keep = keep.to_owned();
    let server = TestServer::start_with(|c| {
        if c.database.url.starts_with("sqlite") {
            c.database.url = format!("sqlite://{}/plexus.db", keep.display());
        }
        c.data_dir = keep.clone();
        c.appservice.config_files = files;
        c.appservice.initial_backoff_ms = 20;
        c.appservice.max_backoff_ms = 200;
        adjust(c);
    })
    .await;
    *fake.homeserver.lock().unwrap() = Some(server.base.clone());
    (server, fake)
}

/// The appservice's bot, acting with the as_token (`?user_id=` added by the paths).
fn appservice_user(like: &TestUser, server: &TestServer) -> TestUser {
    TestUser { token: AS_TOKEN.into(), user_id: format!("@bridgebot:{}", server.server_name), ..like.clone() }
}

#[tokio::test]
async fn events_reach_the_appservice_exactly_once_through_failures_and_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (server, fake) = start(dir.path()).await;
    let alice = server.register("alice").await;
    let bot = format!("@bridgebot:{}", server.server_name);
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    fake.failures.store(2, Ordering::SeqCst);
    alice.post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": bot })).await.ok();
    let message = alice.send_text(&room, "hello bridge").await;
    wait_for("the message", || {
        !fake.attempts_with(&message).is_empty() && fake.attempts_with(&message).iter().any(|a| a.1)
    })
    .await;
    // Two failed attempts, then the same transaction again: one txnId carries it.
    let attempts = fake.attempts_with(&message);
    let ids: std::collections::HashSet<&String> = attempts.iter().map(|a| &a.0).collect();
    assert_eq!(ids.len(), 1, "{attempts:?}");
    let delivered = fake.delivered_events();
    assert_eq!(delivered.iter().filter(|e| e["event_id"] == message.as_str()).count(), 1);
    let sent = delivered.iter().find(|e| e["event_id"] == message.as_str()).unwrap();
    assert_eq!(
        (sent["sender"].as_str(), sent["content"]["body"].as_str()),
        (Some(alice.user_id.as_str()), Some("hello bridge"))
    );
    assert!(delivered.iter().any(|e| e["type"] == "m.room.member" && e["state_key"] == bot.as_str()));
    assert!(fake.transactions.lock().unwrap().iter().all(|t| t.1 == format!("Bearer {HS_TOKEN}")));
    // An event of a room the appservice has no interest in is not sent.
    let other = alice.create_room(json!({})).await;
    let private = alice.send_text(&other, "not for bridges").await;

    // Ephemeral events: typing and a receipt in the bot's room.
    let typing = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    alice.put(&typing, json!({ "typing": true, "timeout": 100 })).await.ok();
    let receipt = format!("/_matrix/client/v3/rooms/{}/receipt/m.read/{}", enc(&room), enc(&message));
    alice.post(&receipt, json!({})).await.ok();
    wait_for("typing and receipt", || {
        let eph = fake.delivered_ephemeral();
        eph.iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"][0] == alice.user_id.as_str())
            && eph
                .iter()
                .any(|e| e["type"] == "m.receipt" && !e["content"][&message]["m.read"][&alice.user_id].is_null())
    })
    .await;
    assert!(fake.attempts_with(&private).is_empty());

    // Queued while the appservice fails, delivered by the restarted server. (The typing
    // expiry holds the old server until it has run.)
    tokio::time::sleep(Duration::from_millis(300)).await;
    fake.failures.store(usize::MAX, Ordering::SeqCst);
    let kept = alice.send_text(&room, "kept across a restart").await;
    wait_for("a failed attempt", || !fake.attempts_with(&kept).is_empty()).await;
    let config = server.config.clone();
    server.stop().await;
    fake.failures.store(0, Ordering::SeqCst);
    let restarted = plexus::AppState::build(config).await.unwrap();
    wait_for("delivery after the restart", || fake.attempts_with(&kept).iter().any(|a| a.1)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let delivered = fake.delivered_events();
    for id in [&message, &kept] {
        assert_eq!(delivered.iter().filter(|e| e["event_id"] == id.as_str()).count(), 1, "{id}");
    }
    let ids: std::collections::HashSet<String> = fake.attempts_with(&kept).into_iter().map(|a| a.0).collect();
    assert_eq!(ids.len(), 1);
    drop(restarted);
}

#[tokio::test]
async fn exclusive_namespaces_are_refused_to_ordinary_users() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _fake) = start(dir.path()).await;
    let body = json!({ "username": "bridge_x", "password": "pw", "auth": { "type": "m.login.dummy" } });
    server
        .request(Method::POST, "/_matrix/client/v3/register", None, Some(&body))
        .await
        .assert_error(400, "M_EXCLUSIVE");
    server.get("/_matrix/client/v3/register/available?username=bridge_x").await.assert_error(400, "M_EXCLUSIVE");
    server.get("/_matrix/client/v3/register/available?username=bridgex").await.ok();
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let alias = enc(&format!("#bridge_a:{}", server.server_name));
    alice
        .put(&format!("/_matrix/client/v3/directory/room/{alias}"), json!({ "room_id": room }))
        .await
        .assert_error(400, "M_EXCLUSIVE");
    alice
        .post("/_matrix/client/v3/createRoom", json!({ "room_alias_name": "bridge_b" }))
        .await
        .assert_error(400, "M_EXCLUSIVE");
    // The appservice itself may.
    let bot = appservice_user(&alice, &server);
    bot.post("/_matrix/client/v3/createRoom", json!({ "room_alias_name": "bridge_b" })).await.ok();
}

#[tokio::test]
async fn appservice_registration_login_and_masquerading() {
    let dir = tempfile::tempdir().unwrap();
    let (server, fake) = start(dir.path()).await;
    let name = &server.server_name;
    let puppet = format!("@bridge_alice:{name}");
    let reg =
        |username: &str| json!({ "type": "m.login.application_service", "username": username, "inhibit_login": true });
    let r = server
        .request(Method::POST, "/_matrix/client/v3/register", Some(AS_TOKEN), Some(&reg("bridge_alice")))
        .await
        .ok();
    assert_eq!(r, json!({ "user_id": puppet }));
    server
        .request(Method::POST, "/_matrix/client/v3/register", Some(AS_TOKEN), Some(&reg("bridge_alice")))
        .await
        .assert_error(400, "M_USER_IN_USE");
    server
        .request(Method::POST, "/_matrix/client/v3/register", Some(AS_TOKEN), Some(&reg("plain")))
        .await
        .assert_error(400, "M_EXCLUSIVE");
    server
        .request(Method::POST, "/_matrix/client/v3/register", Some("wrong"), Some(&reg("bridge_bob")))
        .await
        .assert_error(401, "M_UNKNOWN_TOKEN");

    // whoami: the bot (created at start), or the puppet; never a user outside the namespace.
    let whoami = "/_matrix/client/v3/account/whoami";
    let me = server.request(Method::GET, whoami, Some(AS_TOKEN), None).await.ok();
    assert_eq!(me["user_id"], format!("@bridgebot:{name}"));
    assert!(me.get("device_id").is_none());
    let me =
        server.request(Method::GET, &format!("{whoami}?user_id={}", enc(&puppet)), Some(AS_TOKEN), None).await.ok();
    assert_eq!(me["user_id"], puppet.as_str());
    let alice = server.register("alice").await;
    let outside = format!("{whoami}?user_id={}", enc(&alice.user_id));
    server.request(Method::GET, &outside, Some(AS_TOKEN), None).await.assert_error(403, "M_EXCLUSIVE");
    let unregistered = format!("{whoami}?user_id={}", enc(&format!("@bridge_nobody:{name}")));
    server.request(Method::GET, &unregistered, Some(AS_TOKEN), None).await.assert_error(403, "M_FORBIDDEN");

    // The puppet joins and speaks through the appservice.
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    let as_puppet = |path: &str| format!("{path}?user_id={}", enc(&puppet));
    let join = as_puppet(&format!("/_matrix/client/v3/join/{}", enc(&room)));
    server.request(Method::POST, &join, Some(AS_TOKEN), Some(&json!({}))).await.ok();
    let send = as_puppet(&format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&room)));
    let sent = server
        .request(Method::PUT, &send, Some(AS_TOKEN), Some(&json!({ "msgtype": "m.text", "body": "hi" })))
        .await
        .ok();
    let event = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(sent["event_id"].as_str().unwrap())))
        .await
        .ok();
    assert_eq!(event["sender"], puppet.as_str());

    // Login with m.login.application_service: a device of the puppet.
    let login =
        json!({ "type": "m.login.application_service", "identifier": { "type": "m.id.user", "user": "bridge_alice" } });
    let session = server.request(Method::POST, "/_matrix/client/v3/login", Some(AS_TOKEN), Some(&login)).await.ok();
    assert_eq!(session["user_id"], puppet.as_str());
    let me = server.request(Method::GET, whoami, session["access_token"].as_str(), None).await.ok();
    assert_eq!(
        (me["user_id"].as_str(), me["device_id"].as_str()),
        (Some(puppet.as_str()), session["device_id"].as_str())
    );
    // MSC3202: the appservice acts on one of the puppet's devices.
    let device = session["device_id"].as_str().unwrap();
    let on_device = format!("{whoami}?user_id={}&device_id={device}", enc(&puppet));
    let me = server.request(Method::GET, &on_device, Some(AS_TOKEN), None).await.ok();
    assert_eq!(me["device_id"], device);
    let elsewhere = format!("{whoami}?user_id={}&device_id=NOPE", enc(&puppet));
    server.request(Method::GET, &elsewhere, Some(AS_TOKEN), None).await.assert_error(403, "M_FORBIDDEN");

    // MSC4203: to-device messages for the puppet reach the appservice.
    let messages = json!({ "messages": { &puppet: { "*": { "secret": 1 } } } });
    alice.put("/_matrix/client/v3/sendToDevice/m.test/td1", messages).await.ok();
    wait_for("the to-device message", || {
        let txns = fake.transactions.lock().unwrap();
        txns.iter()
            .filter(|t| t.3)
            .flat_map(|t| t.2["de.sorunome.msc2409.to_device"].as_array().cloned().unwrap_or_default())
            .any(|m| {
                m == json!({ "type": "m.test", "sender": alice.user_id, "content": { "secret": 1 },
                         "to_user_id": puppet, "to_device_id": device })
            })
    })
    .await;
    server
        .request(Method::POST, "/_matrix/client/v3/login", None, Some(&login))
        .await
        .assert_error(401, "M_MISSING_TOKEN");
    let plain =
        json!({ "type": "m.login.application_service", "identifier": { "type": "m.id.user", "user": "alice" } });
    server
        .request(Method::POST, "/_matrix/client/v3/login", Some(AS_TOKEN), Some(&plain))
        .await
        .assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn ping_and_queries() {
    let dir = tempfile::tempdir().unwrap();
    let (server, fake) = start(dir.path()).await;
    let ping = "/_matrix/client/v1/appservice/bridge/ping";
    let r = server.request(Method::POST, ping, Some(AS_TOKEN), Some(&json!({ "transaction_id": "p1" }))).await.ok();
    assert!(r["duration_ms"].as_u64().is_some());
    assert_eq!(
        fake.pings.lock().unwrap().clone(),
        vec![(format!("Bearer {HS_TOKEN}"), json!({ "transaction_id": "p1" }))]
    );
    let alice = server.register("alice").await;
    server.request(Method::POST, ping, Some(&alice.token), Some(&json!({}))).await.assert_error(403, "M_FORBIDDEN");
    server
        .request(Method::POST, "/_matrix/client/v1/appservice/nourl/ping", Some(AS_TOKEN), Some(&json!({})))
        .await
        .assert_error(403, "M_FORBIDDEN");
    server
        .request(Method::POST, "/_matrix/client/v1/appservice/nourl/ping", Some("as-nourl"), Some(&json!({})))
        .await
        .assert_error(400, "M_URL_NOT_SET");

    let resolve = |alias: &str| format!("/_matrix/client/v3/directory/room/{}", enc(alias));
    let known = format!("#bridge_yes:{}", server.server_name);
    let r = alice.get(&resolve(&known)).await.ok();
    assert!(r["room_id"].as_str().unwrap().starts_with('!'));
    alice.get(&resolve(&known)).await.ok();
    assert_eq!(fake.alias_queries.lock().unwrap().clone(), vec![known.clone()]);
    let unknown = format!("#bridge_no:{}", server.server_name);
    alice.get(&resolve(&unknown)).await.assert_error(404, "M_NOT_FOUND");
    let outside = format!("#plain:{}", server.server_name);
    alice.get(&resolve(&outside)).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(fake.alias_queries.lock().unwrap().clone(), vec![known, unknown]);

    // Profiles of unknown users of the namespace are asked of the appservice.
    let profile = |user: &str| format!("/_matrix/client/v3/profile/{}", enc(user));
    let made = format!("@bridge_yes:{}", server.server_name);
    alice.get(&profile(&made)).await.ok();
    let unknown = format!("@bridge_no:{}", server.server_name);
    alice.get(&profile(&unknown)).await.assert_error(404, "M_NOT_FOUND");
    alice.get(&profile(&format!("@plain:{}", server.server_name))).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(fake.user_queries.lock().unwrap().clone(), vec![made, unknown]);
}

#[tokio::test]
async fn users_of_an_unlimited_appservice_skip_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (server, _fake) = start_with(dir.path(), |c| {
        c.rate_limits.enabled = true;
        c.media.upload_burst = 1.0;
        c.media.upload_per_second = 0.01;
    })
    .await;
    let alice = server.register("alice").await;
    let bot = appservice_user(&alice, &server);
    for _ in 0..3 {
        bot.post("/_matrix/media/v1/create", json!({})).await.ok();
    }
    alice.post("/_matrix/media/v1/create", json!({})).await.ok();
    alice.post("/_matrix/media/v1/create", json!({})).await.assert_error(429, "M_LIMIT_EXCEEDED");
}

#[tokio::test]
async fn a_bad_registration_stops_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "id: x\nurl: null\n").unwrap();
    let mut config = plexus::config::Config::with_server_name("example.org");
    config.data_dir = dir.path().to_owned();
    config.database.url = crate::harness::fresh_database(dir.path()).await;
    config.appservice.config_files = vec![path];
    let error = plexus::AppState::build(config).await.err().expect("refused");
    assert!(format!("{error:#}").contains("bad.yaml"), "{error:#}");
}
