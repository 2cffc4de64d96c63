//! Federation transport between real servers on 127.0.0.x: keys (direct, cached, through a
//! notary), X-Matrix authentication, profile and directory queries, the sender (delivery,
//! batching, retries, restart) and the TLS listener. Servers speak plain HTTP to each
//! other (`insecure_plain_http`) except in the TLS test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{OriginalUri, Path};
use axum::http::{HeaderMap, Method};
use plexus::crypto::keys::ServerKey;
use plexus::federation::client::{self, FederationError};
use plexus::federation::keys::{self, KeyNeed, KeyUsage};
use plexus::federation::sender;
use ruma::serde::Base64;
use ruma::signatures::{PublicKeyMap, PublicKeySet};
use ruma::{EventId, OwnedServerName, ServerName};
use serde_json::{Value, json};

use crate::harness::{TestServer, enc, fed_server, name_of, wait_for};

/// The public key set a server publishes (read from its own state, not over the network).
fn key_map(server: &TestServer) -> PublicKeyMap {
    let key = &server.state.server_key;
    let set = PublicKeySet::from([(key.key_id.clone(), Base64::parse(&key.public_key_b64).expect("base64"))]);
    PublicKeyMap::from([(server.state.config.server_name.clone(), set)])
}

fn request_need(server: &ServerName) -> KeyNeed {
    KeyNeed { server: server.to_owned(), key_ids: Vec::new(), usage: KeyUsage::Request }
}

async fn keys_of(at: &TestServer, server: &ServerName) -> PublicKeySet {
    let map = keys::public_keys_for(&at.state, &[request_need(server)]).await.expect("key lookup");
    map.get(server.as_str()).cloned().unwrap_or_default()
}

/// Checks that `object` carries a valid signature of `signer`.
fn assert_signed_by(object: &Value, signer: &TestServer) {
    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(object.clone()).expect("canonical JSON");
    if let Some(ruma::CanonicalJsonValue::Object(signatures)) = object.get_mut("signatures") {
        signatures.retain(|name, _| *name == signer.state.config.server_name);
    }
    ruma::signatures::verify_json(&key_map(signer), &object).expect("signature verifies");
}

#[tokio::test]
async fn keys_are_fetched_cached_and_served_by_a_notary() {
    let origin = fed_server("127.0.0.1").await;
    let notary = fed_server("127.0.0.2").await;
    let notary_name = name_of(&notary);
    let client = TestServer::start_on("127.0.0.3", |c| {
        c.federation.insecure_plain_http = true;
        c.federation.notary_servers = vec![notary_name.to_string()];
    })
    .await;
    let origin_name = name_of(&origin);
    let origin_key = origin.state.server_key.key_id.clone();

    // The notary answers for the origin, co-signed.
    let path = format!("/_matrix/key/v2/query/{}", enc(origin_name.as_str()));
    let answer = notary.get(&path).await.ok();
    let keys = answer["server_keys"].as_array().expect("server_keys");
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0]["server_name"], origin_name.as_str());
    assert_eq!(keys[0]["verify_keys"][&origin_key]["key"], origin.state.server_key.public_key_b64);
    assert_signed_by(&keys[0], &origin);
    assert_signed_by(&keys[0], &notary);

    // POST: servers that cannot be reached and are unknown are left out; the notary
    // answers for itself too.
    let body = json!({ "server_keys": {
        origin_name.as_str(): { origin_key.as_str(): { "minimum_valid_until_ts": 0 } },
        "127.0.0.9:1": {},
        notary_name.as_str(): {},
    }});
    let reply = notary.request(Method::POST, "/_matrix/key/v2/query", None, Some(&body)).await;
    let answer = reply.ok();
    let mut names: Vec<&str> =
        answer["server_keys"].as_array().unwrap().iter().map(|k| k["server_name"].as_str().unwrap()).collect();
    names.sort();
    let mut expected = vec![origin_name.as_str(), notary_name.as_str()];
    expected.sort();
    assert_eq!(names, expected);
    for key in answer["server_keys"].as_array().unwrap() {
        assert_signed_by(key, &notary);
    }

    // The origin goes away: the client gets its keys through the notary's cache.
    origin.stop().await;
    let keys = keys_of(&client, &origin_name).await;
    assert_eq!(keys.keys().collect::<Vec<_>>(), vec![&origin_key]);
    let stored = plexus::storage::federation::signing_keys(&client.state.db, origin_name.as_str()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert!(stored[0].valid_until_ts > plexus::storage::now_ms());

    // And keeps them: with the notary gone too, they come from the database.
    notary.stop().await;
    assert_eq!(keys_of(&client, &origin_name).await.len(), 1);

    // A server nobody knows has no keys.
    assert!(keys_of(&client, "127.0.0.9:1".try_into().unwrap()).await.is_empty());
}

#[tokio::test]
async fn keys_fetched_directly_and_for_events() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let b_name = name_of(&b);
    let b_key = b.state.server_key.key_id.clone();
    assert_eq!(keys_of(&a, &b_name).await.keys().collect::<Vec<_>>(), vec![&b_key]);
    let stored = plexus::storage::federation::signing_keys(&a.state.db, b_name.as_str()).await.unwrap();
    let response = plexus::storage::federation::key_response(&a.state.db, b_name.as_str()).await.unwrap();
    assert!(response.is_some());
    // Valid for an event of now, not for one after the key's validity (room version 5+),
    // but for it in room versions 1-4, which ignore valid_until_ts.
    let event = |ts, enforce| KeyNeed {
        server: b_name.clone(),
        key_ids: vec![b_key.clone()],
        usage: KeyUsage::Event { origin_server_ts: ts, enforce_valid_until: enforce },
    };
    let far = stored[0].valid_until_ts + 1;
    let has_key = |map: PublicKeyMap| map.get(b_name.as_str()).is_some_and(|s| s.contains_key(&b_key));
    assert!(has_key(keys::public_keys_for(&a.state, &[event(plexus::storage::now_ms(), true)]).await.unwrap()));
    assert!(!has_key(keys::public_keys_for(&a.state, &[event(far, true)]).await.unwrap()));
    assert!(has_key(keys::public_keys_for(&a.state, &[event(far, false)]).await.unwrap()));
}

#[tokio::test]
async fn signed_requests_are_accepted_and_forged_ones_refused() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let (a_name, b_name) = (name_of(&a), name_of(&b));
    let alice = a.register("alice").await;
    alice
        .put(
            &format!("/_matrix/client/v3/profile/{}/displayname", enc(&alice.user_id)),
            json!({"displayname": "Alice"}),
        )
        .await
        .ok();
    let uri = format!("/_matrix/federation/v1/query/profile?user_id={}", enc(&alice.user_id));

    // Signed by B through the federation client: accepted.
    let profile: Value = client::request(&b.state, &a_name, Method::GET, &uri, None).await.expect("profile");
    assert_eq!(profile, json!({ "displayname": "Alice" }));

    let sign = |key: &plexus::crypto::keys::ServerKey, destination: &str, signed_uri: &str| {
        let destination: &ServerName = destination.try_into().unwrap();
        plexus::federation::xmatrix::sign_request(key, &b_name, destination, &Method::GET, signed_uri, None).unwrap()
    };
    let send = |authorization: Option<String>| {
        let mut req = a.client.get(format!("{}{uri}", a.base));
        if let Some(value) = authorization {
            req = req.header("authorization", value);
        }
        async move {
            let resp = req.send().await.unwrap();
            (resp.status().as_u16(), resp.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    // The same request signed by hand: accepted.
    let (status, _) = send(Some(sign(&b.state.server_key, a_name.as_str(), &uri))).await;
    assert_eq!(status, 200);
    // No header, another server's key under B's name, another destination, another URI.
    let forger = TestServer::start_on("127.0.0.3", |_| {}).await;
    let forged_key = sign(&forger.state.server_key, a_name.as_str(), &uri)
        .replace(&forger.state.server_key.key_id, &b.state.server_key.key_id);
    let other_uri = format!("/_matrix/federation/v1/query/profile?user_id={}", enc("@bob:127.0.0.1"));
    for authorization in [
        None,
        Some("X-Matrix nonsense".to_owned()),
        Some(forged_key),
        Some(sign(&b.state.server_key, "other.example.org", &uri)),
        Some(sign(&b.state.server_key, a_name.as_str(), &other_uri)),
    ] {
        let (status, body) = send(authorization.clone()).await;
        assert_eq!((status, body["errcode"].as_str()), (401, Some("M_UNAUTHORIZED")), "{authorization:?}");
    }

    // The body is covered by the signature.
    let content = json!({ "a": 1 });
    let canonical = ruma::CanonicalJsonValue::try_from(content.clone()).unwrap();
    let header = plexus::federation::xmatrix::sign_request(
        &b.state.server_key,
        &b_name,
        &a_name,
        &Method::PUT,
        "/_matrix/x",
        Some(canonical),
    )
    .unwrap();
    let mut headers = HeaderMap::new();
    headers.insert("authorization", header.parse().unwrap());
    let verify = |body: Value| {
        let headers = headers.clone();
        let state = a.state.clone();
        async move {
            let bytes = serde_json::to_vec(&body).unwrap();
            plexus::federation::xmatrix::verify_request(&state, &Method::PUT, "/_matrix/x", &headers, &bytes).await
        }
    };
    assert_eq!(verify(content.clone()).await.unwrap(), b_name);
    assert_eq!(verify(json!({ "a": 2 })).await.unwrap_err().errcode(), "M_UNAUTHORIZED");
}

#[tokio::test]
async fn profile_and_directory_queries_across_servers() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let profile_path = format!("/_matrix/client/v3/profile/{}", enc(&alice.user_id));
    alice.put(&format!("{profile_path}/displayname"), json!({"displayname": "Alice"})).await.ok();
    alice.put(&format!("{profile_path}/avatar_url"), json!({"avatar_url": "mxc://a/b"})).await.ok();
    let room_id = alice.create_room(json!({ "room_alias_name": "lobby" })).await;

    let query = |path: String| {
        let state = b.state.clone();
        let a_name = a_name.clone();
        async move { client::request::<Value>(&state, &a_name, Method::GET, &path, None).await }
    };
    let profile = |user: &str, field: Option<&str>| {
        let field = field.map_or(String::new(), |f| format!("&field={f}"));
        query(format!("/_matrix/federation/v1/query/profile?user_id={}{field}", enc(user)))
    };
    let refused = |result: Result<Value, FederationError>| match result {
        Err(FederationError::Remote { status, errcode, .. }) => (status.as_u16(), errcode),
        other => panic!("expected a refusal, got {other:?}"),
    };
    assert_eq!(
        profile(&alice.user_id, None).await.unwrap(),
        json!({"displayname": "Alice", "avatar_url": "mxc://a/b"})
    );
    assert_eq!(profile(&alice.user_id, Some("displayname")).await.unwrap(), json!({"displayname": "Alice"}));
    assert_eq!(refused(profile(&alice.user_id, Some("m.nope")).await), (404, "M_NOT_FOUND".into()));
    assert_eq!(refused(profile(&format!("@nobody:{a_name}"), None).await), (404, "M_NOT_FOUND".into()));
    assert_eq!(refused(profile("@bob:elsewhere.org", None).await), (400, "M_INVALID_PARAM".into()));
    assert_eq!(refused(query("/_matrix/federation/v1/query/profile".into()).await), (400, "M_MISSING_PARAM".into()));

    let alias = format!("#lobby:{a_name}");
    let directory = query(format!("/_matrix/federation/v1/query/directory?room_alias={}", enc(&alias))).await.unwrap();
    assert_eq!(directory, json!({ "room_id": room_id, "servers": [a_name.as_str()] }));
    let missing = query(format!("/_matrix/federation/v1/query/directory?room_alias={}", enc(&format!("#no:{a_name}"))));
    assert_eq!(refused(missing.await), (404, "M_NOT_FOUND".into()));

    // The version needs no signature; unknown query types are unrecognised.
    let version = b.get("/_matrix/federation/v1/version").await.ok();
    assert_eq!(version["server"]["name"], "Plexus");
    assert_eq!(refused(query("/_matrix/federation/v1/query/nope".into()).await), (404, "M_UNRECOGNIZED".into()));
}

/// What a fake destination received.
#[derive(Debug, Clone)]
struct Received {
    txn_id: String,
    authorization: String,
    uri: String,
    body: Value,
}

/// A destination that records transactions; fails the first `failures` with a 500 and
/// notes how many were in flight at once. With an identity, it also serves its keys.
#[derive(Clone, Default)]
struct FakeDestination {
    identity: Option<(OwnedServerName, Arc<ServerKey>)>,
    received: Arc<Mutex<Vec<Received>>>,
    failures: Arc<AtomicUsize>,
    in_flight: Arc<AtomicUsize>,
    most_in_flight: Arc<AtomicUsize>,
}

impl FakeDestination {
    fn serve(&self, listener: tokio::net::TcpListener) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        let identity = self.identity.clone();
        let app = axum::Router::new().route(
            "/_matrix/federation/v1/send/{txn_id}",
            axum::routing::put(
                move |Path(txn_id): Path<String>, OriginalUri(uri): OriginalUri, headers: HeaderMap, body: String| {
                    let this = this.clone();
                    async move {
                        let now = this.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                        this.most_in_flight.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        this.in_flight.fetch_sub(1, Ordering::SeqCst);
                        let authorization = headers["authorization"].to_str().unwrap().to_owned();
                        let body: Value = serde_json::from_str(&body).unwrap();
                        this.received.lock().unwrap().push(Received {
                            txn_id,
                            authorization,
                            uri: uri.to_string(),
                            body,
                        });
                        let fail = this.failures.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
                        let status = if fail.is_ok() { 500 } else { 200 };
                        (axum::http::StatusCode::from_u16(status).unwrap(), axum::Json(json!({ "pdus": {} })))
                    }
                },
            ),
        );
        let app = app.route(
            "/_matrix/key/v2/server",
            axum::routing::get(move || {
                let identity = identity.clone();
                async move {
                    let (name, key) = identity.expect("a destination with keys");
                    let response = json!({
                        "server_name": name,
                        "verify_keys": { &key.key_id: { "key": key.public_key_b64 } },
                        "valid_until_ts": plexus::storage::now_ms() + 3_600_000,
                    });
                    let mut object: ruma::CanonicalJsonObject = serde_json::from_value(response).unwrap();
                    key.sign_json(name.as_str(), &mut object).unwrap();
                    axum::Json(object)
                }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() })
    }

    fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

/// A free port on `ip`, left unbound: the destination starts down.
async fn free_addr(ip: &str) -> std::net::SocketAddr {
    tokio::net::TcpListener::bind(format!("{ip}:0")).await.unwrap().local_addr().unwrap()
}

async fn queue_len(server: &TestServer, destination: &ServerName) -> usize {
    plexus::storage::federation::next_batch(&server.state.db, destination.as_str(), 1000, 1000).await.unwrap().len()
}

async fn failures(server: &TestServer, destination: &ServerName) -> i64 {
    let failing = plexus::storage::federation::failing_destinations(&server.state.db).await.unwrap();
    failing.into_iter().find(|(d, _, _)| d == destination.as_str()).map_or(0, |(_, f, _)| f)
}

/// Checks the X-Matrix header of a received transaction with ruma's own verifier.
fn assert_signed_transaction(received: &Received, sender: &TestServer, destination: &ServerName) {
    use ruma::api::federation::authentication::XMatrix;
    let auth = XMatrix::parse(&received.authorization).expect("X-Matrix header");
    assert_eq!(auth.origin.as_str(), sender.state.config.server_name);
    let request = axum::http::Request::builder()
        .method("PUT")
        .uri(&received.uri)
        .body(serde_json::to_vec(&received.body).unwrap())
        .unwrap();
    auth.verify_http_request(&request, destination, &key_map(sender)).expect("transaction signature verifies");
}

#[tokio::test]
async fn sender_delivers_batches_one_at_a_time_and_retries() {
    let a = fed_server("127.0.0.1").await;
    let alice = a.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let event_id = alice.send_text(&room_id, "hello").await;
    let event_id = EventId::parse(&event_id).unwrap();

    let addr = free_addr("127.0.0.4").await;
    let destination: OwnedServerName = addr.to_string().try_into().unwrap();
    let a_name = name_of(&a);
    let targets = [&*destination, &*a_name];
    for _ in 0..60 {
        sender::send_pdu(&a.state, targets, &event_id).await.unwrap();
    }
    for i in 0..120 {
        let content = json!({ "room_id": room_id, "user_id": alice.user_id, "typing": i % 2 == 0 });
        sender::send_edu(&a.state, targets, "m.typing", content).await.unwrap();
    }
    // Nothing is queued for ourselves; the destination is down: the first attempt fails.
    assert_eq!(queue_len(&a, &a_name).await, 0);
    wait_for("a failed attempt", async || failures(&a, &destination).await >= 1).await;
    assert_eq!(queue_len(&a, &destination).await, 180);

    // It comes back and answers 500 once: retried with the same transaction, then drained.
    let fake = FakeDestination::default();
    fake.failures.store(1, Ordering::SeqCst);
    let _server = fake.serve(tokio::net::TcpListener::bind(addr).await.unwrap());
    wait_for("the queue to drain", async || queue_len(&a, &destination).await == 0).await;
    let received = fake.received();
    assert_eq!(received.len(), 3, "{received:#?}");
    assert_eq!(received[0].txn_id, received[1].txn_id);
    assert_ne!(received[1].txn_id, received[2].txn_id);
    let counts = |r: &Received| (r.body["pdus"].as_array().unwrap().len(), r.body["edus"].as_array().unwrap().len());
    assert_eq!(counts(&received[1]), (50, 100));
    assert_eq!(counts(&received[2]), (10, 20));
    assert_eq!(fake.most_in_flight.load(Ordering::SeqCst), 1);
    for r in &received {
        assert_eq!(r.body["origin"], a.state.config.server_name);
        assert_signed_transaction(r, &a, &destination);
    }
    let pdu = &received[1].body["pdus"][0];
    assert_eq!(pdu["content"]["body"], "hello");
    assert_eq!(pdu["room_id"], room_id);
    assert!(pdu.get("unsigned").is_none() && pdu["signatures"].get(a.state.config.server_name.as_str()).is_some());
    assert_eq!(
        received[1].body["edus"][0],
        json!({ "edu_type": "m.typing", "content": {
        "room_id": room_id, "user_id": alice.user_id, "typing": true } })
    );
    wait_for("the destination to be marked up", async || failures(&a, &destination).await == 0).await;

    // New items go out at once now.
    sender::send_pdu(&a.state, [&*destination], &event_id).await.unwrap();
    wait_for("the next transaction", async || fake.received().len() == 4).await;
}

#[tokio::test]
async fn a_destination_that_contacts_us_is_retried_at_once() {
    let a = fed_server("127.0.0.1").await;
    let alice = a.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let event_id = EventId::parse(alice.send_text(&room_id, "hi").await).unwrap();

    // A destination with a signing key of its own, failing its first three transactions.
    let listener = tokio::net::TcpListener::bind("127.0.0.4:0").await.unwrap();
    let destination: OwnedServerName = listener.local_addr().unwrap().to_string().try_into().unwrap();
    let key_dir = tempfile::tempdir().unwrap();
    let key = Arc::new(ServerKey::load_or_generate(key_dir.path()).unwrap());
    let fake = FakeDestination { identity: Some((destination.clone(), key.clone())), ..Default::default() };
    fake.failures.store(3, Ordering::SeqCst);
    let _server = fake.serve(listener);
    sender::send_pdu(&a.state, [&*destination], &event_id).await.unwrap();
    // Attempts at about 0 s, 2 s and 6 s fail; the next one is due 8 s after the third.
    wait_for("three failed attempts", async || failures(&a, &destination).await >= 3).await;

    // A signed request from the destination shows that it is up: A retries at once.
    let uri = format!("/_matrix/federation/v1/query/profile?user_id={}", enc(&alice.user_id));
    let authorization =
        plexus::federation::xmatrix::sign_request(&key, &destination, &name_of(&a), &Method::GET, &uri, None).unwrap();
    let asked = Instant::now();
    let reply = a.client.get(format!("{}{uri}", a.base)).header("authorization", authorization).send().await.unwrap();
    assert_eq!(reply.status(), 200);
    wait_for("the retry", async || fake.received().len() == 4).await;
    assert!(asked.elapsed() < Duration::from_secs(4), "retried after {:?}", asked.elapsed());
    wait_for("the destination to be marked up", async || failures(&a, &destination).await == 0).await;
    assert_eq!(queue_len(&a, &destination).await, 0);
}

#[tokio::test]
async fn the_queue_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let keep = dir.path().to_owned();
    let a = TestServer::start_on("127.0.0.1", |c| {
        c.federation.insecure_plain_http = true;
        if c.database.url.starts_with("sqlite") {
            c.database.url = format!("sqlite://{}/plexus.db", keep.display());
        }
        c.data_dir = keep.clone();
    })
    .await;
    let alice = a.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let event_id = EventId::parse(alice.send_text(&room_id, "persisted").await).unwrap();
    let addr = free_addr("127.0.0.4").await;
    let destination: OwnedServerName = addr.to_string().try_into().unwrap();
    sender::send_pdu(&a.state, [&*destination], &event_id).await.unwrap();
    wait_for("a failed attempt", async || failures(&a, &destination).await >= 1).await;

    let config = a.config.clone();
    a.stop().await;
    let fake = FakeDestination::default();
    let _server = fake.serve(tokio::net::TcpListener::bind(addr).await.unwrap());
    let restarted = plexus::AppState::build(config).await.unwrap();
    let received = async || fake.received().len() == 1;
    wait_for("delivery after the restart", received).await;
    assert_eq!(fake.received()[0].body["pdus"][0]["content"]["body"], "persisted");
    drop(restarted);
}

#[tokio::test]
async fn tls_listener_with_a_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    // A CA and a certificate for 127.0.0.5 signed by it.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.5".to_owned()]).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    let (ca_file, cert_file, key_file) =
        (dir.path().join("ca.pem"), dir.path().join("cert.pem"), dir.path().join("key.pem"));
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();

    // The server's name is its TLS listener's address.
    let tls_listener = tokio::net::TcpListener::bind("127.0.0.5:0").await.unwrap();
    let tls_addr = tls_listener.local_addr().unwrap();
    let (cert_path, key_path) = (cert_file.clone(), key_file.clone());
    let server = TestServer::start_on("127.0.0.5", |c| {
        c.server_name = tls_addr.to_string();
        c.federation.listen = Some(tls_addr);
        c.federation.tls_cert = Some(cert_path);
        c.federation.tls_key = Some(key_path);
    })
    .await;
    let tls = plexus::federation::tls::server_config(&cert_file, &key_file).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(plexus::federation::listener::serve_tls(server.state.clone(), tls_listener, tls, async {
        let _ = stopped.await;
    }));
    let server_name = name_of(&server);

    // Trusting the CA: keys and signed queries over TLS.
    let trusting = TestServer::start_on("127.0.0.1", |c| c.federation.trusted_ca_file = Some(ca_file.clone())).await;
    assert_eq!(keys_of(&trusting, &server_name).await.len(), 1);
    let version: Value =
        client::request(&trusting.state, &server_name, Method::GET, "/_matrix/federation/v1/version", None)
            .await
            .unwrap();
    assert_eq!(version["server"]["name"], "Plexus");

    // The whole API is served there, client API included.
    let https = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(ca.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let versions: Value =
        https.get(format!("https://{tls_addr}/_matrix/client/versions")).send().await.unwrap().json().await.unwrap();
    assert!(versions["versions"].is_array());
    let well_known: Value =
        https.get(format!("https://{tls_addr}/.well-known/matrix/server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(well_known["m.server"], tls_addr.to_string());

    // Without the CA the certificate is refused; skipping verification (tests only) accepts it.
    let distrusting = TestServer::start_on("127.0.0.1", |_| {}).await;
    assert!(keys_of(&distrusting, &server_name).await.is_empty());
    let err =
        client::request::<Value>(&distrusting.state, &server_name, Method::GET, "/_matrix/federation/v1/version", None)
            .await
            .unwrap_err();
    assert!(matches!(err, FederationError::Unreachable { .. }), "{err:?}");
    let careless = TestServer::start_on("127.0.0.1", |c| c.federation.insecure_skip_verify = true).await;
    assert_eq!(keys_of(&careless, &server_name).await.len(), 1);
    let _ = stop.send(());
}

/// A new ed25519 key pair named `ed25519:<name>` (or by its public key), with that public key.
fn ed25519_pair(name: Option<&str>) -> (ruma::signatures::Ed25519KeyPair, String) {
    use base64::Engine;
    let der = ruma::signatures::Ed25519KeyPair::generate();
    let public = ruma::signatures::Ed25519KeyPair::from_der(&der, String::new()).unwrap().public_key();
    let public = base64::engine::general_purpose::STANDARD_NO_PAD.encode(public);
    let pair = ruma::signatures::Ed25519KeyPair::from_der(&der, name.unwrap_or(&public).to_owned()).unwrap();
    (pair, public)
}

fn signed(object: Value, signer: &str, pair: &ruma::signatures::Ed25519KeyPair) -> Value {
    let mut canonical: ruma::CanonicalJsonObject = serde_json::from_value(object).unwrap();
    ruma::signatures::sign_json(signer, pair, &mut canonical).unwrap();
    serde_json::to_value(canonical).unwrap()
}

#[tokio::test]
async fn devices_and_keys_of_local_users_for_other_servers() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let a_name = name_of(&a);
    let alice = a.register("alice").await;
    let (user, device) = (alice.user_id.as_str(), alice.device_id.as_str());
    let (device_pair, device_ed25519) = ed25519_pair(Some(device));
    let device_keys = signed(
        json!({
            "user_id": user,
            "device_id": device,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{device}"): ed25519_pair(None).1, format!("ed25519:{device}"): device_ed25519 },
        }),
        user,
        &device_pair,
    );
    let one_time_key = signed(json!({ "key": ed25519_pair(None).1 }), user, &device_pair);
    let upload = json!({ "device_keys": device_keys, "one_time_keys": { "signed_curve25519:AAAA1": one_time_key } });
    alice.post("/_matrix/client/v3/keys/upload", upload).await.ok();
    let (master_pair, master) = ed25519_pair(None);
    let cross_key = |usage: &str, public: &str| json!({ "user_id": user, "usage": [usage], "keys": { format!("ed25519:{public}"): public } });
    let master_key = cross_key("master", &master);
    let self_signing_key = signed(cross_key("self_signing", &ed25519_pair(None).1), user, &master_pair);
    let user_signing_key = signed(cross_key("user_signing", &ed25519_pair(None).1), user, &master_pair);
    let cross_signing = json!({
        "master_key": master_key, "self_signing_key": self_signing_key, "user_signing_key": user_signing_key,
    });
    alice.post("/_matrix/client/v3/keys/device_signing/upload", cross_signing).await.ok();

    let ask = |method: Method, path: &str, body: Option<Value>| {
        let (state, a_name, path) = (b.state.clone(), a_name.clone(), path.to_owned());
        async move { client::request::<Value>(&state, &a_name, method, &path, body.as_ref()).await.unwrap() }
    };
    let mut expected_device = device_keys.clone();
    expected_device["unsigned"] = json!({ "device_display_name": "test" });
    let body = json!({ "device_keys": { user: [], "@remote:elsewhere.org": [] } });
    let keys = ask(Method::POST, "/_matrix/federation/v1/user/keys/query", Some(body)).await;
    assert_eq!(keys["device_keys"], json!({ user: { device: expected_device } }));
    assert_eq!(keys["master_keys"], json!({ user: master_key }));
    assert_eq!(keys["self_signing_keys"], json!({ user: self_signing_key }));
    assert!(keys.get("user_signing_keys").is_none(), "the user-signing key stays private");

    let devices = ask(Method::GET, &format!("/_matrix/federation/v1/user/devices/{}", enc(user)), None).await;
    assert_eq!(devices["user_id"], user);
    assert!(devices["stream_id"].as_i64().unwrap() > 0);
    assert_eq!(
        devices["devices"],
        json!([{ "device_id": device, "keys": device_keys, "device_display_name": "test" }])
    );
    assert_eq!((&devices["master_key"], &devices["self_signing_key"]), (&master_key, &self_signing_key));

    // The one-time key is handed out once; then there is none.
    let claim = json!({ "one_time_keys": { user: { device: "signed_curve25519" } } });
    let claimed = ask(Method::POST, "/_matrix/federation/v1/user/keys/claim", Some(claim.clone())).await;
    assert_eq!(claimed, json!({ "one_time_keys": { user: { device: { "signed_curve25519:AAAA1": one_time_key } } } }));
    let again = ask(Method::POST, "/_matrix/federation/v1/user/keys/claim", Some(claim)).await;
    assert_eq!(again, json!({ "one_time_keys": {} }));

    // Only local users: another server's user is refused.
    let err = client::request::<Value>(
        &b.state,
        &a_name,
        Method::GET,
        &format!("/_matrix/federation/v1/user/devices/{}", enc("@bob:elsewhere.org")),
        None,
    )
    .await
    .unwrap_err();
    assert!(matches!(err, FederationError::Remote { ref errcode, .. } if errcode == "M_INVALID_PARAM"), "{err:?}");
}
