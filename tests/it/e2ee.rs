//! End-to-end encryption chapter: device keys, one-time and fallback keys, to-device
//! messages, device-list changes, cross-signing, key backups. Keys are real ed25519 keys and
//! signatures; what /sync will deliver is checked through the storage functions it will use.

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD;
use plexus::storage::{self, Db};
use ruma::signatures::Ed25519KeyPair;
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser};

const C: &str = "/_matrix/client/v3";

/// A new ed25519 key pair whose key ID is `ed25519:<name>`, or `ed25519:<public key>` when
/// `name` is `None` (cross-signing keys); with its unpadded base64 public key.
fn key_pair(name: Option<&str>) -> (Ed25519KeyPair, String) {
    let der = Ed25519KeyPair::generate();
    let public = STANDARD_NO_PAD.encode(Ed25519KeyPair::from_der(&der, String::new()).expect("key").public_key());
    let pair = Ed25519KeyPair::from_der(&der, name.map_or(public.clone(), str::to_owned)).expect("key");
    (pair, public)
}

/// `object` with a signature by `signer` added.
fn sign(object: Value, signer: &str, pair: &Ed25519KeyPair) -> Value {
    let Value::Object(map) = object else { panic!("not an object") };
    let mut canonical = ruma::canonical_json::try_from_json_map(map).expect("canonical JSON");
    ruma::signatures::sign_json(signer, pair, &mut canonical).expect("signing");
    serde_json::to_value(canonical).expect("JSON")
}

fn random_curve_key() -> String {
    let (_, public) = key_pair(Some("x"));
    public
}

/// A logged-in device with its ed25519 and curve25519 identity keys.
struct Device {
    user: TestUser,
    pair: Ed25519KeyPair,
    ed25519: String,
    curve25519: String,
    next_key: usize,
}

impl Device {
    fn new(user: &TestUser) -> Self {
        let (pair, ed25519) = key_pair(Some(&user.device_id));
        Device { user: user.clone(), pair, ed25519, curve25519: random_curve_key(), next_key: 0 }
    }

    fn unsigned_device_keys(&self) -> Value {
        let d = &self.user.device_id;
        json!({
            "user_id": self.user.user_id,
            "device_id": d,
            "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
            "keys": { format!("curve25519:{d}"): self.curve25519, format!("ed25519:{d}"): self.ed25519 },
        })
    }

    fn device_keys(&self) -> Value {
        sign(self.unsigned_device_keys(), &self.user.user_id, &self.pair)
    }

    /// `n` signed curve25519 keys, as one-time keys or (marked) fallback keys.
    fn keys(&mut self, n: usize, fallback: bool) -> Value {
        let mut keys = serde_json::Map::new();
        for _ in 0..n {
            self.next_key += 1;
            let mut key = json!({ "key": random_curve_key() });
            if fallback {
                key["fallback"] = json!(true);
            }
            let prefix = if fallback { "FB" } else { "AAA" };
            keys.insert(
                format!("signed_curve25519:{prefix}{:05}", self.next_key),
                sign(key, &self.user.user_id, &self.pair),
            );
        }
        Value::Object(keys)
    }

    async fn upload(&self, body: Value) -> Value {
        self.user.post(&format!("{C}/keys/upload"), body).await.ok()
    }
}

/// A second device of an existing user (password "password").
async fn second_device(server: &TestServer, user: &TestUser) -> TestUser {
    let localpart = user.user_id.trim_start_matches('@').split(':').next().expect("localpart");
    let login = server.login(localpart, "password").await.ok();
    user.with_token(login["access_token"].as_str().expect("token"), login["device_id"].as_str().expect("device"))
}

/// The server's database, opened a second time, for what /sync will read.
async fn database(server: &TestServer) -> Db {
    Db::connect(&server.config.database.url, 2).await.expect("database")
}

async fn query(user: &TestUser, of: &TestUser) -> Value {
    user.post(&format!("{C}/keys/query"), json!({ "device_keys": { &of.user_id: [] } })).await.ok()
}

/// Deletes a device of `user`, through password UIA.
async fn delete_device(user: &TestUser, device_id: &str) {
    let path = format!("{C}/devices/{device_id}");
    let challenge = user.delete(&path, json!({})).await;
    assert_eq!(challenge.status, 401, "{challenge:?}");
    user.delete(&path, json!({ "auth": password_auth(user, &challenge.body["session"]) })).await.ok();
}

fn password_auth(user: &TestUser, session: &Value) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user.user_id },
        "password": "password",
        "session": session,
    })
}

#[tokio::test]
async fn upload_and_query_device_keys() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let mut a = Device::new(&alice);
    let b = Device::new(&bob);

    let keys = a.device_keys();
    let otks = a.keys(2, false);
    let counts = a.upload(json!({ "device_keys": keys, "one_time_keys": otks })).await;
    assert_eq!(counts["one_time_key_counts"], json!({ "signed_curve25519": 2 }));
    b.upload(json!({ "device_keys": b.device_keys() })).await;

    let answer = query(&bob, &alice).await;
    let device = &answer["device_keys"][&alice.user_id][&alice.device_id];
    assert_eq!(device["keys"], keys["keys"]);
    assert_eq!(device["signatures"], keys["signatures"]);
    assert_eq!(device["unsigned"]["device_display_name"], json!("test"));
    assert_eq!(answer["failures"], json!({}));

    // Unknown devices are left out; remote users are reported in `failures`.
    let body = json!({ "device_keys": { &alice.user_id: ["NOSUCHDEVICE"], "@carol:remote.example": [] } });
    let answer = bob.post(&format!("{C}/keys/query"), body).await.ok();
    assert_eq!(answer["device_keys"][&alice.user_id], json!({}));
    assert!(answer["failures"].get("remote.example").is_some(), "{answer}");
    bob.post(&format!("{C}/keys/query"), json!({ "device_keys": { "not a user": [] } }))
        .await
        .assert_error(400, "M_BAD_JSON");

    // The same keys again are fine, and so are other algorithms (a new signature); other
    // identity keys for the device are not.
    a.upload(json!({ "device_keys": keys })).await;
    let mut more_algorithms = a.unsigned_device_keys();
    more_algorithms["algorithms"] = json!(["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2", "x.new"]);
    a.upload(json!({ "device_keys": sign(more_algorithms, &alice.user_id, &a.pair) })).await;
    let answer = query(&bob, &alice).await;
    assert_eq!(answer["device_keys"][&alice.user_id][&alice.device_id]["algorithms"][2], json!("x.new"));
    let other = Device::new(&alice);
    alice
        .post(&format!("{C}/keys/upload"), json!({ "device_keys": other.device_keys() }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    let answer = query(&bob, &alice).await;
    assert_eq!(answer["device_keys"][&alice.user_id][&alice.device_id]["keys"], keys["keys"]);

    // Keys naming another device or user are refused.
    let mut wrong_device = a.unsigned_device_keys();
    wrong_device["device_id"] = json!("OTHERDEVICE");
    let wrong_device = sign(wrong_device, &alice.user_id, &a.pair);
    alice
        .post(&format!("{C}/keys/upload"), json!({ "device_keys": wrong_device }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    alice
        .post(&format!("{C}/keys/upload"), json!({ "device_keys": b.device_keys() }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn bad_self_signature_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let a = Device::new(&alice);

    let mut tampered = a.device_keys();
    tampered["algorithms"] = json!(["m.megolm.v1.aes-sha2"]);
    alice
        .post(&format!("{C}/keys/upload"), json!({ "device_keys": tampered }))
        .await
        .assert_error(400, "M_INVALID_SIGNATURE");

    // Signed by some other key than the one the object names.
    let (stranger, _) = key_pair(Some(&alice.device_id));
    let signed_by_stranger = sign(a.unsigned_device_keys(), &alice.user_id, &stranger);
    alice
        .post(&format!("{C}/keys/upload"), json!({ "device_keys": signed_by_stranger }))
        .await
        .assert_error(400, "M_INVALID_SIGNATURE");

    let mut unsigned = a.unsigned_device_keys();
    unsigned["signatures"] = json!({});
    alice
        .post(&format!("{C}/keys/upload"), json!({ "device_keys": unsigned }))
        .await
        .assert_error(400, "M_INVALID_SIGNATURE");

    let answer = query(&alice, &alice).await;
    assert_eq!(answer["device_keys"][&alice.user_id], json!({}), "nothing was stored");
}

#[tokio::test]
async fn claim_takes_each_one_time_key_once_then_the_fallback_key() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let db = database(&server).await;
    let mut a = Device::new(&alice);
    let otks = a.keys(3, false);
    let fallback = a.keys(1, true);
    let counts =
        a.upload(json!({ "device_keys": a.device_keys(), "one_time_keys": otks, "fallback_keys": fallback })).await;
    assert_eq!(counts["one_time_key_counts"]["signed_curve25519"], json!(3));
    assert_eq!(a.upload(json!({})).await["one_time_key_counts"]["signed_curve25519"], json!(3));

    // The same one-time key again is accepted; another key under a used key ID is not.
    let (first_id, first_key) = otks.as_object().unwrap().iter().next().unwrap();
    a.upload(json!({ "one_time_keys": { first_id: first_key } })).await;
    let other = sign(json!({ "key": random_curve_key() }), &alice.user_id, &a.pair);
    alice
        .post(&format!("{C}/keys/upload"), json!({ "one_time_keys": { first_id: other } }))
        .await
        .assert_error(400, "M_INVALID_PARAM");

    let (user, device) = (alice.user_id.as_str(), alice.device_id.as_str());
    let counts = storage::e2ee_keys::device_one_time_keys_count(&db, user, device).await.unwrap();
    assert_eq!(counts.get("signed_curve25519"), Some(&3));
    let unused = storage::e2ee_keys::device_unused_fallback_key_types(&db, user, device).await.unwrap();
    assert_eq!(unused, ["signed_curve25519"]);

    let claim = json!({ "one_time_keys": { &alice.user_id: { &alice.device_id: "signed_curve25519" } } });
    let mut claimed = Vec::new();
    for _ in 0..5 {
        let answer = bob.post(&format!("{C}/keys/claim"), claim.clone()).await.ok();
        let keys = answer["one_time_keys"][&alice.user_id][&alice.device_id].as_object().cloned().unwrap_or_default();
        assert_eq!(keys.len(), 1, "{answer}");
        claimed.push(keys.into_iter().next().unwrap());
    }
    let mut one_time: Vec<&str> = claimed[..3].iter().map(|(id, _)| id.as_str()).collect();
    one_time.sort();
    one_time.dedup();
    assert_eq!(one_time.len(), 3, "three different one-time keys: {claimed:?}");
    for (id, key) in &claimed[..3] {
        assert_eq!(key, &otks[id], "handed out as uploaded");
    }
    for (id, key) in &claimed[3..] {
        assert_eq!(key, &fallback[id], "then the fallback key, again and again");
        assert_eq!(key["fallback"], json!(true));
    }

    assert_eq!(a.upload(json!({})).await["one_time_key_counts"]["signed_curve25519"], json!(0));
    let counts = storage::e2ee_keys::device_one_time_keys_count(&db, user, device).await.unwrap();
    assert_eq!(counts.get("signed_curve25519"), None);
    assert!(storage::e2ee_keys::device_unused_fallback_key_types(&db, user, device).await.unwrap().is_empty());

    // Re-uploading the used fallback key keeps it used; a new one is unused.
    a.upload(json!({ "fallback_keys": fallback })).await;
    assert!(storage::e2ee_keys::device_unused_fallback_key_types(&db, user, device).await.unwrap().is_empty());
    let new_fallback = a.keys(1, true);
    a.upload(json!({ "fallback_keys": new_fallback })).await;
    let unused = storage::e2ee_keys::device_unused_fallback_key_types(&db, user, device).await.unwrap();
    assert_eq!(unused, ["signed_curve25519"]);

    // A device without keys gives nothing; two fallback keys for one algorithm are refused.
    let nothing = json!({ "one_time_keys": { &bob.user_id: { &bob.device_id: "signed_curve25519" } } });
    assert_eq!(alice.post(&format!("{C}/keys/claim"), nothing).await.ok()["one_time_keys"], json!({}));
    alice
        .post(&format!("{C}/keys/upload"), json!({ "fallback_keys": a.keys(2, true) }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn send_to_device_is_idempotent_and_fans_out() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let alice2 = second_device(&server, &alice).await;
    let bob = server.register("bob").await;
    let db = database(&server).await;
    let start = storage::current_stream_pos(&db).await.unwrap();
    let body = json!({ "messages": { &alice.user_id: { "*": { "n": 1 } } } });
    bob.put(&format!("{C}/sendToDevice/m.test/txn1"), body.clone()).await.ok();
    bob.put(&format!("{C}/sendToDevice/m.test/txn1"), body).await.ok();
    let body =
        json!({ "messages": { &alice.user_id: { &alice2.device_id: { "n": 2 } }, "@x:remote.example": { "*": {} } } });
    bob.put(&format!("{C}/sendToDevice/m.test/txn2"), body).await.ok();
    let now = storage::current_stream_pos(&db).await.unwrap();

    let pending = |device: &str| {
        let (db, user, device) = (db.clone(), alice.user_id.clone(), device.to_owned());
        async move { plexus::e2ee::to_device::pending_events(&db, &user, &device, (i64::MIN, now), 100).await.unwrap() }
    };
    let (first, _) = pending(&alice.device_id).await;
    assert_eq!(first, [json!({ "sender": bob.user_id, "type": "m.test", "content": { "n": 1 } })]);
    let (second, last) = pending(&alice2.device_id).await;
    assert_eq!(second.iter().map(|e| e["content"]["n"].clone()).collect::<Vec<_>>(), [json!(1), json!(2)]);
    let last = last.expect("a position");
    assert!(start < last && last <= now);

    // The limit keeps the oldest; before the first position there is nothing.
    let oldest = storage::to_device::pending(&db, &alice.user_id, &alice2.device_id, (i64::MIN, now), 1).await.unwrap();
    assert_eq!(oldest.len(), 1);
    assert_eq!(oldest[0].content, r#"{"n":1}"#);
    let early =
        storage::to_device::pending(&db, &alice.user_id, &alice2.device_id, (i64::MIN, start), 100).await.unwrap();
    assert!(early.is_empty());

    // Acknowledging up to the first message's position deletes only it.
    let mut tx = db.begin().await.unwrap();
    let gone = storage::to_device::delete_up_to(&mut tx, &alice.user_id, &alice2.device_id, oldest[0].stream_pos)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    assert_eq!(gone, 1);
    let (left, _) = pending(&alice2.device_id).await;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["content"]["n"], json!(2));

    // The same transaction ID from another device of the sender is another message.
    let bob2 = second_device(&server, &bob).await;
    let body = json!({ "messages": { &alice.user_id: { &alice.device_id: { "n": 3 } } } });
    bob2.put(&format!("{C}/sendToDevice/m.test/txn1"), body).await.ok();
    let now = storage::current_stream_pos(&db).await.unwrap();
    let all = plexus::e2ee::to_device::pending_events(&db, &alice.user_id, &alice.device_id, (i64::MIN, now), 100)
        .await
        .unwrap();
    assert_eq!(all.0.len(), 2);

    bob.put(&format!("{C}/sendToDevice/m.test/txn3"), json!({ "messages": { &alice.user_id: { "*": 5 } } }))
        .await
        .assert_error(400, "M_BAD_JSON");
    bob.put(&format!("{C}/sendToDevice/m.test/txn4"), json!({})).await.assert_error(400, "M_BAD_JSON");

    // A deleted device's inbox goes with it.
    delete_device(&alice, &alice2.device_id).await;
    let inbox =
        storage::to_device::pending(&db, &alice.user_id, &alice2.device_id, (i64::MIN, i64::MAX), 100).await.unwrap();
    assert!(inbox.is_empty());
}

/// A user's three cross-signing key pairs (key IDs `ed25519:<public key>`).
struct CrossSigning {
    master: (Ed25519KeyPair, String),
    self_signing: (Ed25519KeyPair, String),
    user_signing: (Ed25519KeyPair, String),
}

impl CrossSigning {
    fn new() -> Self {
        CrossSigning { master: key_pair(None), self_signing: key_pair(None), user_signing: key_pair(None) }
    }

    fn key(user_id: &str, usage: &str, public: &str) -> Value {
        json!({ "user_id": user_id, "usage": [usage], "keys": { format!("ed25519:{public}"): public } })
    }

    fn master_key(&self, user_id: &str) -> Value {
        Self::key(user_id, "master", &self.master.1)
    }

    /// The body of `/keys/device_signing/upload`: the two other keys signed by the master key.
    fn upload_body(&self, user_id: &str) -> Value {
        json!({
            "master_key": self.master_key(user_id),
            "self_signing_key": sign(Self::key(user_id, "self_signing", &self.self_signing.1), user_id, &self.master.0),
            "user_signing_key": sign(Self::key(user_id, "user_signing", &self.user_signing.1), user_id, &self.master.0),
        })
    }
}

#[tokio::test]
async fn cross_signing_keys_and_signatures_show_in_query() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let db = database(&server).await;
    let a = Device::new(&alice);
    let device_keys = a.device_keys();
    a.upload(json!({ "device_keys": device_keys })).await;
    let before = storage::current_stream_pos(&db).await.unwrap();

    // The first upload needs no UIA.
    let xa = CrossSigning::new();
    let upload = xa.upload_body(&alice.user_id);
    alice.post(&format!("{C}/keys/device_signing/upload"), upload.clone()).await.ok();
    let after = storage::current_stream_pos(&db).await.unwrap();
    let changed = storage::device_lists::changed_users(&db, before, after).await.unwrap();
    assert_eq!(changed, [alice.user_id.as_str()]);

    let seen_by_bob = query(&bob, &alice).await;
    assert_eq!(seen_by_bob["master_keys"][&alice.user_id], upload["master_key"]);
    assert_eq!(seen_by_bob["self_signing_keys"][&alice.user_id], upload["self_signing_key"]);
    assert!(seen_by_bob["user_signing_keys"].get(&alice.user_id).is_none(), "private to alice");
    let seen_by_alice = query(&alice, &alice).await;
    assert_eq!(seen_by_alice["user_signing_keys"][&alice.user_id], upload["user_signing_key"]);

    // Alice's self-signing key signs her device; her device signs her master key.
    let ssk_id = format!("ed25519:{}", xa.self_signing.1);
    let mut device_signed = sign(device_keys.clone(), &alice.user_id, &xa.self_signing.0);
    device_signed.as_object_mut().unwrap().remove("unsigned");
    let master_signed = sign(xa.master_key(&alice.user_id), &alice.user_id, &a.pair);
    let body = json!({ &alice.user_id: { &alice.device_id: device_signed, &xa.master.1: master_signed } });
    let answer = alice.post(&format!("{C}/keys/signatures/upload"), body).await.ok();
    assert_eq!(answer["failures"], json!({}));

    let seen_by_bob = query(&bob, &alice).await;
    let device_signatures = &seen_by_bob["device_keys"][&alice.user_id][&alice.device_id]["signatures"][&alice.user_id];
    assert_eq!(device_signatures[&ssk_id], device_signed["signatures"][&alice.user_id][&ssk_id]);
    assert!(device_signatures.get(format!("ed25519:{}", alice.device_id)).is_some(), "self-signature kept");
    let device_id = format!("ed25519:{}", alice.device_id);
    let master_signatures = &seen_by_bob["master_keys"][&alice.user_id]["signatures"][&alice.user_id];
    assert_eq!(master_signatures[&device_id], master_signed["signatures"][&alice.user_id][&device_id]);

    // Bob's user-signing key signs Alice's master key: only Bob sees that signature.
    let xb = CrossSigning::new();
    bob.post(&format!("{C}/keys/device_signing/upload"), xb.upload_body(&bob.user_id)).await.ok();
    let usk_id = format!("ed25519:{}", xb.user_signing.1);
    let alice_master_by_bob = sign(xa.master_key(&alice.user_id), &bob.user_id, &xb.user_signing.0);
    let body = json!({ &alice.user_id: { &xa.master.1: alice_master_by_bob } });
    let answer = bob.post(&format!("{C}/keys/signatures/upload"), body).await.ok();
    assert_eq!(answer["failures"], json!({}));
    let seen_by_bob = query(&bob, &alice).await;
    assert_eq!(
        seen_by_bob["master_keys"][&alice.user_id]["signatures"][&bob.user_id][&usk_id],
        alice_master_by_bob["signatures"][&bob.user_id][&usk_id]
    );
    let seen_by_alice = query(&alice, &alice).await;
    assert!(seen_by_alice["master_keys"][&alice.user_id]["signatures"].get(&bob.user_id).is_none());

    // Bad signatures are per-key failures; the good ones in the same request still count.
    let (stranger, _) = key_pair(Some(&xb.user_signing.1));
    let forged = sign(xa.master_key(&alice.user_id), &bob.user_id, &stranger);
    let mut changed_device = a.unsigned_device_keys();
    changed_device["algorithms"] = json!([]);
    let changed_device = sign(changed_device, &alice.user_id, &xa.self_signing.0);
    let body = json!({
        &alice.user_id: { &xa.master.1: forged },
        &bob.user_id: { "NOSUCHDEVICE": { "signatures": {} } },
        "@carol:remote.example": { "KEY": {} },
    });
    let answer = bob.post(&format!("{C}/keys/signatures/upload"), body).await.ok();
    let failures = &answer["failures"];
    assert_eq!(failures[&alice.user_id][&xa.master.1]["errcode"], json!("M_INVALID_SIGNATURE"), "{answer}");
    assert_eq!(failures[&bob.user_id]["NOSUCHDEVICE"]["errcode"], json!("M_NOT_FOUND"), "{answer}");
    assert!(failures["@carol:remote.example"].get("KEY").is_some(), "{answer}");
    let body = json!({ &alice.user_id: { &alice.device_id: changed_device } });
    let answer = alice.post(&format!("{C}/keys/signatures/upload"), body).await.ok();
    assert_eq!(answer["failures"][&alice.user_id][&alice.device_id]["errcode"], json!("M_INVALID_PARAM"), "{answer}");
}

#[tokio::test]
async fn replacing_cross_signing_keys_needs_uia() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let path = format!("{C}/keys/device_signing/upload");

    // A self-signing key needs a master key; it must be signed by it.
    let xa = CrossSigning::new();
    let ssk_alone = json!({ "self_signing_key": xa.upload_body(&alice.user_id)["self_signing_key"] });
    alice.post(&path, ssk_alone).await.assert_error(400, "M_MISSING_PARAM");
    let mut badly_signed = xa.upload_body(&alice.user_id);
    badly_signed["self_signing_key"] =
        sign(CrossSigning::key(&alice.user_id, "self_signing", &xa.self_signing.1), &alice.user_id, &xa.user_signing.0);
    alice.post(&path, badly_signed).await.assert_error(400, "M_INVALID_SIGNATURE");
    let mut wrong_usage = xa.upload_body(&alice.user_id);
    wrong_usage["master_key"]["usage"] = json!(["self_signing"]);
    alice.post(&path, wrong_usage).await.assert_error(400, "M_INVALID_PARAM");

    let first = xa.upload_body(&alice.user_id);
    alice.post(&path, first.clone()).await.ok();
    // The same keys again (a retry) need no UIA.
    alice.post(&path, first.clone()).await.ok();

    let xa2 = CrossSigning::new();
    let second = xa2.upload_body(&alice.user_id);
    let challenge = alice.post(&path, second.clone()).await;
    assert_eq!(challenge.status, 401, "{challenge:?}");
    assert!(challenge.body["flows"].is_array() && challenge.body["session"].is_string(), "{challenge:?}");
    assert_eq!(query(&alice, &alice).await["master_keys"][&alice.user_id], first["master_key"], "unchanged");

    let mut wrong_password = password_auth(&alice, &challenge.body["session"]);
    wrong_password["password"] = json!("wrong");
    let mut with_wrong_password = second.clone();
    with_wrong_password["auth"] = wrong_password;
    let r = alice.post(&path, with_wrong_password).await;
    assert_eq!((r.status.as_u16(), r.errcode()), (401, "M_FORBIDDEN"), "{r:?}");

    let auth = password_auth(&alice, &challenge.body["session"]);
    let mut with_auth = second.clone();
    with_auth["auth"] = auth;
    alice.post(&path, with_auth).await.ok();
    let answer = query(&alice, &alice).await;
    assert_eq!(answer["master_keys"][&alice.user_id], second["master_key"]);
    assert_eq!(answer["self_signing_keys"][&alice.user_id], second["self_signing_key"]);
    assert_eq!(answer["user_signing_keys"][&alice.user_id], second["user_signing_key"]);
}

#[tokio::test]
async fn device_list_changes_are_recorded() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let alice2 = second_device(&server, &alice).await;
    let bob = server.register("bob").await;
    let db = database(&server).await;
    let changed = |from: i64, to: i64| {
        let db = db.clone();
        async move { storage::device_lists::changed_users(&db, from, to).await.unwrap() }
    };
    let mut a = Device::new(&alice);
    let a2 = Device::new(&alice2);
    let b = Device::new(&bob);

    let t0 = storage::current_stream_pos(&db).await.unwrap();
    a.upload(json!({ "device_keys": a.device_keys() })).await;
    let t1 = storage::current_stream_pos(&db).await.unwrap();
    // One-time keys are not a device-list change.
    let otks = a.keys(5, false);
    a.upload(json!({ "one_time_keys": otks })).await;
    let t2 = storage::current_stream_pos(&db).await.unwrap();
    b.upload(json!({ "device_keys": b.device_keys() })).await;
    a2.upload(json!({ "device_keys": a2.device_keys() })).await;
    let t3 = storage::current_stream_pos(&db).await.unwrap();

    assert_eq!(changed(t0, t1).await, [alice.user_id.as_str()]);
    assert!(changed(t1, t2).await.is_empty());
    assert_eq!(changed(t2, t3).await, [alice.user_id.clone(), bob.user_id.clone()]);
    assert_eq!(changed(t0, t3).await.len(), 2);

    // Deleting a device with keys is a change, and its keys go.
    delete_device(&alice, &alice2.device_id).await;
    let t4 = storage::current_stream_pos(&db).await.unwrap();
    assert_eq!(changed(t3, t4).await, [alice.user_id.as_str()]);
    let devices = query(&bob, &alice).await["device_keys"][&alice.user_id].clone();
    assert_eq!(devices.as_object().unwrap().keys().collect::<Vec<_>>(), [&alice.device_id]);
}

#[tokio::test]
async fn key_backup_versions_and_keys() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let rk = format!("{C}/room_keys");
    let algorithm = "m.megolm_backup.v1.curve25519-aes-sha2";
    let room = "!room:example.org";
    let room_path = format!("{rk}/keys/%21room%3Aexample.org");
    let session = |verified: bool, index: u64, forwarded: u64, tag: &str| {
        json!({
            "first_message_index": index,
            "forwarded_count": forwarded,
            "is_verified": verified,
            "session_data": { "ephemeral": "e", "ciphertext": tag, "mac": "m" },
        })
    };

    alice.get(&format!("{rk}/version")).await.assert_error(404, "M_NOT_FOUND");
    let body = json!({ "algorithm": algorithm, "auth_data": { "public_key": "abc" } });
    let version = alice.post(&format!("{rk}/version"), body).await.ok()["version"].as_str().unwrap().to_owned();
    let info = alice.get(&format!("{rk}/version")).await.ok();
    assert_eq!(info["version"], json!(version));
    assert_eq!(info["algorithm"], json!(algorithm));
    assert_eq!(info["auth_data"], json!({ "public_key": "abc" }));
    assert_eq!(info["count"], json!(0));
    let etag0 = info["etag"].as_str().expect("etag").to_owned();
    bob.get(&format!("{rk}/version")).await.assert_error(404, "M_NOT_FOUND");
    bob.get(&format!("{rk}/version/{version}")).await.assert_error(404, "M_NOT_FOUND");

    // Updating: only auth_data; the algorithm and the version must match.
    let update =
        json!({ "algorithm": algorithm, "auth_data": { "public_key": "abc", "extra": 1 }, "version": version });
    alice.put(&format!("{rk}/version/{version}"), update).await.ok();
    assert_eq!(alice.get(&format!("{rk}/version/{version}")).await.ok()["auth_data"]["extra"], json!(1));
    let other_algorithm = json!({ "algorithm": "other", "auth_data": {} });
    alice.put(&format!("{rk}/version/{version}"), other_algorithm).await.assert_error(400, "M_INVALID_PARAM");
    let other_version = json!({ "algorithm": algorithm, "auth_data": {}, "version": "77" });
    alice.put(&format!("{rk}/version/{version}"), other_version).await.assert_error(400, "M_INVALID_PARAM");
    alice
        .put(&format!("{rk}/version/77"), json!({ "algorithm": algorithm, "auth_data": {} }))
        .await
        .assert_error(404, "M_NOT_FOUND");

    // A key in, then the replacement rule: a worse key is ignored, a better one wins.
    let put = alice.put(&format!("{room_path}/s1?version={version}"), session(false, 5, 1, "first")).await.ok();
    assert_eq!(put["count"], json!(1));
    let etag1 = put["etag"].as_str().unwrap().to_owned();
    assert_ne!(etag1, etag0);
    for worse in [session(false, 6, 0, "x"), session(false, 5, 2, "x"), session(false, 5, 1, "same")] {
        let put = alice.put(&format!("{room_path}/s1?version={version}"), worse).await.ok();
        assert_eq!((put["count"].clone(), put["etag"].clone()), (json!(1), json!(etag1)));
    }
    let get = |path: String| {
        let alice = alice.clone();
        async move { alice.get(&path).await.ok() }
    };
    assert_eq!(get(format!("{room_path}/s1?version={version}")).await["session_data"]["ciphertext"], json!("first"));
    alice.put(&format!("{room_path}/s1?version={version}"), session(false, 5, 0, "fewer forwards")).await.ok();
    alice.put(&format!("{room_path}/s1?version={version}"), session(false, 2, 3, "lower index")).await.ok();
    alice.put(&format!("{room_path}/s1?version={version}"), session(true, 9, 9, "verified")).await.ok();
    let got = get(format!("{room_path}/s1?version={version}")).await;
    assert_eq!(got, session(true, 9, 9, "verified"));

    // Several rooms and sessions at once; reading all, one room, one session.
    let body = json!({ "rooms": {
        room: { "sessions": { "s2": session(true, 0, 0, "s2") } },
        "!other:example.org": { "sessions": { "s3": session(true, 0, 0, "s3") } },
    } });
    let put = alice.put(&format!("{rk}/keys?version={version}"), body).await.ok();
    assert_eq!(put["count"], json!(3));
    let all = get(format!("{rk}/keys?version={version}")).await;
    assert_eq!(all["rooms"][room]["sessions"]["s2"], session(true, 0, 0, "s2"));
    assert_eq!(all["rooms"]["!other:example.org"]["sessions"]["s3"], session(true, 0, 0, "s3"));
    let one_room = get(format!("{room_path}?version={version}")).await;
    assert_eq!(one_room["sessions"].as_object().unwrap().len(), 2);
    let body = json!({ "sessions": { "s4": session(false, 0, 0, "s4") } });
    assert_eq!(alice.put(&format!("{room_path}?version={version}"), body).await.ok()["count"], json!(4));
    assert_eq!(get(format!("{rk}/keys/%21empty%3Ax?version={version}")).await, json!({ "sessions": {} }));
    alice.get(&format!("{room_path}/nosuch?version={version}")).await.assert_error(404, "M_NOT_FOUND");
    alice.get(&format!("{room_path}/s1")).await.assert_error(400, "M_MISSING_PARAM");
    alice
        .put(&format!("{room_path}/s1?version={version}"), json!({ "is_verified": true }))
        .await
        .assert_error(400, "M_BAD_JSON");
    assert_eq!(alice.get(&format!("{rk}/version")).await.ok()["count"], json!(4));

    // A newer version becomes current: writing to the old one is refused, reading still works.
    let body = json!({ "algorithm": algorithm, "auth_data": { "public_key": "def" } });
    let version2 = alice.post(&format!("{rk}/version"), body).await.ok()["version"].as_str().unwrap().to_owned();
    assert_ne!(version2, version);
    assert_eq!(alice.get(&format!("{rk}/version")).await.ok()["version"], json!(version2));
    let wrong = alice.put(&format!("{room_path}/s1?version={version}"), session(true, 0, 0, "x")).await;
    wrong.assert_error(403, "M_WRONG_ROOM_KEYS_VERSION");
    assert_eq!(wrong.body["current_version"], json!(version2));
    alice
        .put(&format!("{room_path}/s1?version=99999"), session(true, 0, 0, "x"))
        .await
        .assert_error(404, "M_NOT_FOUND");
    alice.put(&format!("{room_path}/s1?version=abc"), session(true, 0, 0, "x")).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(
        get(format!("{rk}/keys?version={version}")).await["rooms"][room]["sessions"].as_object().unwrap().len(),
        3
    );
    assert_eq!(get(format!("{rk}/keys?version={version2}")).await, json!({ "rooms": {} }));

    // Deleting keys: one session, one room, all.
    let del = alice.delete(&format!("{room_path}/s1?version={version}"), json!({})).await.ok();
    assert_eq!(del["count"], json!(3));
    assert_ne!(del["etag"], put["etag"]);
    alice.get(&format!("{room_path}/s1?version={version}")).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(alice.delete(&format!("{room_path}?version={version}"), json!({})).await.ok()["count"], json!(1));
    assert_eq!(alice.delete(&format!("{rk}/keys?version={version}"), json!({})).await.ok()["count"], json!(0));
    alice.delete(&format!("{rk}/keys?version=99999"), json!({})).await.assert_error(404, "M_NOT_FOUND");

    // Deleting versions: the previous one becomes current again; deleting twice is fine.
    alice.delete(&format!("{rk}/version/{version2}"), json!({})).await.ok();
    alice.delete(&format!("{rk}/version/{version2}"), json!({})).await.ok();
    alice.get(&format!("{rk}/version/{version2}")).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(alice.get(&format!("{rk}/version")).await.ok()["version"], json!(version));
    alice.delete(&format!("{rk}/version/{version}"), json!({})).await.ok();
    alice.get(&format!("{rk}/version")).await.assert_error(404, "M_NOT_FOUND");
    alice.delete(&format!("{rk}/version/99999"), json!({})).await.assert_error(404, "M_NOT_FOUND");
    let body = json!({ "algorithm": algorithm, "auth_data": {} });
    let version3 = alice.post(&format!("{rk}/version"), body).await.ok()["version"].as_str().unwrap().to_owned();
    assert!(![&version, &version2].contains(&&version3), "versions are never reused");
}

#[tokio::test]
async fn a_dehydrated_device_collects_to_device_messages_for_a_later_login() {
    const D: &str = "/_matrix/client/unstable/org.matrix.msc3814.v1/dehydrated_device";
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    alice.get(D).await.assert_error(404, "M_NOT_FOUND");

    // The dehydrated device's keys are signed with its own key, as any device's.
    let mut dehydrated = Device::new(&alice.with_token(&alice.token, "DEHYDRATED1"));
    let body = json!({
        "device_id": "DEHYDRATED1",
        "device_data": { "algorithm": "org.matrix.msc3814.v1.olm", "device_pickle": "opaque" },
        "initial_device_display_name": "Dehydrated",
        "device_keys": dehydrated.device_keys(),
        "one_time_keys": dehydrated.keys(2, false),
        "fallback_keys": dehydrated.keys(1, true),
    });
    assert_eq!(alice.put(D, body.clone()).await.ok(), json!({ "device_id": "DEHYDRATED1" }));
    let stored = alice.get(D).await.ok();
    assert_eq!(stored["device_id"], "DEHYDRATED1");
    assert_eq!(stored["device_data"]["device_pickle"], "opaque");
    // Others see it as a device of alice's and can claim its keys.
    let keys = query(&bob, &alice).await;
    assert!(keys["device_keys"][&alice.user_id]["DEHYDRATED1"].is_object(), "{keys}");
    let claim = json!({ "one_time_keys": { &alice.user_id: { "DEHYDRATED1": "signed_curve25519" } } });
    let claimed = bob.post(&format!("{C}/keys/claim"), claim).await.ok();
    assert!(claimed["one_time_keys"][&alice.user_id]["DEHYDRATED1"].is_object(), "{claimed}");

    // Messages sent to it wait, in batches that are not consumed.
    for n in 0..3 {
        let messages = json!({ "messages": { &alice.user_id: { "DEHYDRATED1": { "n": n } } } });
        bob.put(&format!("{C}/sendToDevice/m.room_key/t{n}"), messages).await.ok();
    }
    let events = |next: Option<&str>| {
        let body = next.map_or(json!({}), |n| json!({ "next_batch": n }));
        let alice = alice.clone();
        async move { alice.post(&format!("{D}/DEHYDRATED1/events"), body).await.ok() }
    };
    let first = events(None).await;
    let got: Vec<&Value> = first["events"].as_array().unwrap().iter().map(|e| &e["content"]["n"]).collect();
    assert_eq!(got, [&json!(0), &json!(1), &json!(2)]);
    assert_eq!(first["events"][0]["sender"], bob.user_id.as_str());
    let next = first["next_batch"].as_str().unwrap().to_owned();
    assert_eq!(events(Some(&next)).await["events"], json!([]));
    assert_eq!(events(None).await["events"].as_array().unwrap().len(), 3, "batches are not consumed");
    alice.post(&format!("{D}/OTHER/events"), json!({})).await.assert_error(403, "M_FORBIDDEN");
    alice
        .post(&format!("{D}/DEHYDRATED1/events"), json!({ "next_batch": "x" }))
        .await
        .assert_error(400, "M_INVALID_PARAM");

    // A new one replaces it; a normal device's ID cannot be taken.
    let mut body2 = body.clone();
    body2["device_id"] = json!(alice.device_id);
    alice.put(D, body2).await.assert_error(400, "M_INVALID_PARAM");
    let mut replacement = Device::new(&alice.with_token(&alice.token, "DEHYDRATED2"));
    let body3 = json!({
        "device_id": "DEHYDRATED2",
        "device_data": { "algorithm": "org.matrix.msc3814.v1.olm" },
        "device_keys": replacement.device_keys(),
        "one_time_keys": replacement.keys(1, false),
    });
    alice.put(D, body3).await.ok();
    let devices = alice.get(&format!("{C}/devices")).await.ok();
    let ids: Vec<&str> =
        devices["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&"DEHYDRATED2") && !ids.contains(&"DEHYDRATED1"), "{ids:?}");
    assert_eq!(alice.delete(D, json!({})).await.ok(), json!({ "device_id": "DEHYDRATED2" }));
    alice.get(D).await.assert_error(404, "M_NOT_FOUND");
    assert!(query(&bob, &alice).await["device_keys"][&alice.user_id].get("DEHYDRATED2").is_none());
}
