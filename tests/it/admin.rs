//! The admin API (`/_synapse/admin`), shared-secret registration, account moderation
//! (shadow-ban, suspension, lock), room shutdown and account deactivation.

use hmac::{Hmac, Mac};
use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{Reply, TestServer, TestUser};
use crate::room_util::{C, enc, join, public_room, send_text};

const A1: &str = "/_synapse/admin/v1";
const A2: &str = "/_synapse/admin/v2";

/// Registers `localpart` and makes it a server admin.
async fn admin(server: &TestServer, localpart: &str) -> TestUser {
    let user = server.register(localpart).await;
    let mut tx = server.state.db.begin().await.unwrap();
    plexus::storage::users::set_admin(&mut tx, &user.user_id, true).await.unwrap();
    tx.commit().await.unwrap();
    user
}

fn mac(secret: &str, nonce: &str, user: &str, password: &str, admin: bool) -> String {
    let mut m = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes()).unwrap();
    let role = if admin { "admin" } else { "notadmin" };
    m.update(format!("{nonce}\0{user}\0{password}\0{role}").as_bytes());
    m.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

async fn nonce(server: &TestServer) -> String {
    server.get(&format!("{A1}/register")).await.ok()["nonce"].as_str().unwrap().to_owned()
}

async fn shared_secret_register(server: &TestServer, nonce: &str, user: &str, mac: &str, admin: bool) -> Reply {
    let body = json!({ "nonce": nonce, "username": user, "password": "pw", "admin": admin, "mac": mac });
    server.request(Method::POST, &format!("{A1}/register"), None, Some(&body)).await
}

#[tokio::test]
async fn shared_secret_registration() {
    let server = TestServer::start_with(|c| c.registration.shared_secret = Some("s3cret".into())).await;
    let n = nonce(&server).await;
    let bad = mac("wrong", &n, "root", "pw", true);
    shared_secret_register(&server, &n, "root", &bad, true).await.assert_error(403, "M_FORBIDDEN");
    // The refused attempt used the nonce up.
    let good = mac("s3cret", &n, "root", "pw", true);
    shared_secret_register(&server, &n, "root", &good, true).await.assert_error(400, "M_UNKNOWN");

    let n = nonce(&server).await;
    let r = shared_secret_register(&server, &n, "root", &mac("s3cret", &n, "root", "pw", true), true).await.ok();
    assert_eq!(r["user_id"], json!(format!("@root:{}", server.server_name)));
    let token = r["access_token"].as_str().unwrap();
    let r = server
        .request(Method::GET, &format!("{A1}/users/{}/admin", enc(r["user_id"].as_str().unwrap())), Some(token), None)
        .await;
    assert_eq!(r.ok()["admin"], json!(true));
    // A nonce works once, even with a correct MAC.
    let again = shared_secret_register(&server, &n, "other", &mac("s3cret", &n, "other", "pw", false), false).await;
    again.assert_error(400, "M_UNKNOWN");
    // The MAC covers the admin flag.
    let n = nonce(&server).await;
    let r = shared_secret_register(&server, &n, "sneaky", &mac("s3cret", &n, "sneaky", "pw", false), true).await;
    r.assert_error(403, "M_FORBIDDEN");

    let closed = TestServer::start().await;
    closed.get(&format!("{A1}/register")).await.assert_error(400, "M_UNKNOWN");
}

#[tokio::test]
async fn every_admin_endpoint_refuses_non_admins() {
    let server = TestServer::start().await;
    let admin = admin(&server, "root").await;
    let user = server.register("mallory").await;
    let room = public_room(&admin).await;
    let u = enc(&user.user_id);
    let r = enc(&room);
    let s = &server.server_name;
    let endpoints: Vec<(Method, String, Value)> = vec![
        (Method::GET, format!("{A1}/server_version"), json!(null)),
        (Method::GET, format!("{A2}/users"), json!(null)),
        (Method::GET, format!("{A2}/users/{u}"), json!(null)),
        (Method::PUT, format!("{A2}/users/{u}"), json!({ "admin": true })),
        (Method::GET, format!("{A1}/users/{u}/admin"), json!(null)),
        (Method::PUT, format!("{A1}/users/{u}/admin"), json!({ "admin": true })),
        (Method::POST, format!("{A1}/deactivate/{u}"), json!({})),
        (Method::POST, format!("{A1}/reset_password/{u}"), json!({ "new_password": "x" })),
        (Method::POST, format!("{A1}/users/{u}/shadow_ban"), json!({})),
        (Method::DELETE, format!("{A1}/users/{u}/shadow_ban"), json!({})),
        (Method::PUT, format!("{A1}/suspend/{u}"), json!({ "suspend": true })),
        (Method::POST, format!("{A1}/users/{u}/login"), json!({})),
        (Method::GET, format!("{A1}/users/{u}/joined_rooms"), json!(null)),
        (Method::GET, format!("{A1}/whois/{u}"), json!(null)),
        (Method::GET, format!("{A2}/users/{u}/devices"), json!(null)),
        (Method::POST, format!("{A2}/users/{u}/devices"), json!({ "device_id": "X" })),
        (Method::GET, format!("{A2}/users/{u}/devices/{}", user.device_id), json!(null)),
        (Method::PUT, format!("{A2}/users/{u}/devices/{}", user.device_id), json!({})),
        (Method::DELETE, format!("{A2}/users/{u}/devices/{}", user.device_id), json!(null)),
        (Method::POST, format!("{A2}/users/{u}/delete_devices"), json!({ "devices": [] })),
        (Method::GET, format!("{A1}/rooms"), json!(null)),
        (Method::GET, format!("{A1}/rooms/{r}"), json!(null)),
        (Method::DELETE, format!("{A1}/rooms/{r}"), json!({})),
        (Method::DELETE, format!("{A2}/rooms/{r}"), json!({})),
        (Method::GET, format!("{A2}/rooms/{r}/delete_status"), json!(null)),
        (Method::GET, format!("{A2}/rooms/delete_status/abc"), json!(null)),
        (Method::GET, format!("{A1}/rooms/{r}/members"), json!(null)),
        (Method::GET, format!("{A1}/rooms/{r}/state"), json!(null)),
        (Method::GET, format!("{A1}/rooms/{r}/block"), json!(null)),
        (Method::PUT, format!("{A1}/rooms/{r}/block"), json!({ "block": true })),
        (Method::POST, format!("{A1}/rooms/{r}/make_room_admin"), json!({})),
        (Method::POST, format!("{A1}/purge_history/{r}"), json!({ "purge_up_to_ts": 1 })),
        (Method::POST, format!("{A1}/purge_history/{r}/{}", enc("$unknown")), json!({})),
        (Method::GET, format!("{A1}/purge_history_status/abc"), json!(null)),
        (Method::GET, format!("{A1}/registration_tokens"), json!(null)),
        (Method::POST, format!("{A1}/registration_tokens/new"), json!({})),
        (Method::GET, format!("{A1}/registration_tokens/abc"), json!(null)),
        (Method::PUT, format!("{A1}/registration_tokens/abc"), json!({})),
        (Method::DELETE, format!("{A1}/registration_tokens/abc"), json!(null)),
        (Method::GET, format!("{A1}/event_reports"), json!(null)),
        (Method::GET, format!("{A1}/event_reports/1"), json!(null)),
        (Method::DELETE, format!("{A1}/event_reports/1"), json!(null)),
        (Method::POST, format!("{A1}/media/quarantine/{s}/abc"), json!({})),
        (Method::POST, format!("{A1}/media/unquarantine/{s}/abc"), json!({})),
        (Method::POST, format!("{A1}/room/{r}/media/quarantine"), json!({})),
        (Method::POST, format!("{A1}/user/{u}/media/quarantine"), json!({})),
        (Method::DELETE, format!("{A1}/media/{s}/abc"), json!(null)),
        (Method::GET, format!("{A1}/users/{u}/media"), json!(null)),
        (Method::DELETE, format!("{A1}/users/{u}/media"), json!(null)),
        (Method::POST, format!("{A1}/media/delete?before_ts=1700000000000"), json!({})),
        (Method::POST, format!("{A1}/purge_media_cache?before_ts=1700000000000"), json!({})),
        (Method::GET, format!("{A1}/statistics/users/media"), json!(null)),
        (Method::POST, format!("{A1}/send_server_notice"), json!({ "user_id": user.user_id, "content": {} })),
        (Method::GET, format!("/_matrix/client/v1/admin/lock/{u}"), json!(null)),
        (Method::PUT, format!("/_matrix/client/v1/admin/lock/{u}"), json!({ "locked": true })),
        (Method::GET, format!("/_matrix/client/v1/admin/suspend/{u}"), json!(null)),
        (Method::PUT, format!("/_matrix/client/v1/admin/suspend/{u}"), json!({ "suspended": true })),
        (Method::GET, format!("{C}/admin/whois/{}", enc(&admin.user_id)), json!(null)),
    ];
    for (method, path, body) in &endpoints {
        let body = (!body.is_null()).then_some(body);
        let r = user.request(method.clone(), path, body).await;
        assert_eq!((r.status.as_u16(), r.errcode()), (403, "M_FORBIDDEN"), "{method} {path}: {r:?}");
        let r = server.request(method.clone(), path, None, body).await;
        assert_eq!((r.status.as_u16(), r.errcode()), (401, "M_MISSING_TOKEN"), "{method} {path}: {r:?}");
    }
    // Nothing was done on the user's behalf.
    user.get(&format!("{C}/account/whoami")).await.ok();
    assert!(user.get(&format!("{C}/joined_rooms")).await.ok()["joined_rooms"].as_array().unwrap().is_empty());
    // The admin passes the check on each (what they do is tested below; some answer 404
    // for the made-up IDs, or 400 once the user they act on is deactivated).
    for (method, path, body) in &endpoints {
        let body = (!body.is_null()).then_some(body);
        let r = admin.request(method.clone(), path, body).await;
        assert!(![401, 403].contains(&r.status.as_u16()) && r.status.as_u16() < 500, "{method} {path}: {r:?}");
    }
}

#[tokio::test]
async fn users_list_query_create_modify() {
    let server = TestServer::start().await;
    let admin = admin(&server, "root").await;
    for name in ["ann", "bob", "cat"] {
        server.register(name).await;
    }
    let r = admin.get(&format!("{A2}/users?from=0&limit=2")).await.ok();
    assert_eq!(r["total"], json!(4));
    assert_eq!(r["users"].as_array().unwrap().len(), 2);
    assert_eq!(r["next_token"], json!("2"));
    let r = admin.get(&format!("{A2}/users?from=2&limit=2")).await.ok();
    assert_eq!(r["users"].as_array().unwrap().len(), 2);
    assert!(r.get("next_token").is_none(), "{r}");
    let r = admin.get(&format!("{A2}/users?name=bo")).await.ok();
    assert_eq!(r["users"][0]["name"], json!(format!("@bob:{}", server.server_name)));
    assert_eq!(r["total"], json!(1));
    let r = admin.get(&format!("{A2}/users?order_by=name&dir=b&limit=1")).await.ok();
    assert_eq!(r["users"][0]["name"], json!(format!("@root:{}", server.server_name)));
    admin.get(&format!("{A2}/users?order_by=nonsense")).await.assert_error(400, "M_INVALID_PARAM");
    admin.get(&format!("{A2}/users?limit=-1")).await.assert_error(400, "M_INVALID_PARAM");
    admin.get(&format!("{A2}/users/{}", enc("@x:elsewhere.org"))).await.assert_error(400, "M_INVALID_PARAM");

    let dan = format!("@dan:{}", server.server_name);
    let r = admin.put(&format!("{A2}/users/{}", enc(&dan)), json!({ "password": "pw1", "displayname": "Dan" })).await;
    assert_eq!(r.status.as_u16(), 201, "{r:?}");
    assert_eq!(r.body["displayname"], json!("Dan"));
    let login = server.login("dan", "pw1").await.ok();
    let dan_user = admin.with_token(login["access_token"].as_str().unwrap(), login["device_id"].as_str().unwrap());
    let dan_user = crate::harness::TestUser { user_id: dan.clone(), ..dan_user };
    let r =
        admin.put(&format!("{A2}/users/{}", enc(&dan)), json!({ "admin": true, "avatar_url": "mxc://x/y" })).await.ok();
    assert_eq!((r["admin"].clone(), r["avatar_url"].clone()), (json!(true), json!("mxc://x/y")));
    admin.put(&format!("{A1}/users/{}/admin", enc(&dan)), json!({ "admin": false })).await.ok();
    assert_eq!(admin.get(&format!("{A1}/users/{}/admin", enc(&dan))).await.ok()["admin"], json!(false));
    // An admin may not demote themselves.
    admin
        .put(&format!("{A1}/users/{}/admin", enc(&admin.user_id)), json!({ "admin": false }))
        .await
        .assert_error(400, "M_UNKNOWN");

    // Reset password: sessions end by default.
    admin.post(&format!("{A1}/reset_password/{}", enc(&dan)), json!({ "new_password": "pw2" })).await.ok();
    dan_user.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    server.login("dan", "pw1").await.assert_error(403, "M_FORBIDDEN");
    server.login("dan", "pw2").await.ok();

    // Devices.
    let devices = admin.get(&format!("{A2}/users/{}/devices", enc(&dan))).await.ok();
    assert_eq!(devices["total"], json!(1));
    let device = devices["devices"][0]["device_id"].as_str().unwrap().to_owned();
    let path = format!("{A2}/users/{}/devices/{device}", enc(&dan));
    admin.put(&path, json!({ "display_name": "phone" })).await.ok();
    assert_eq!(admin.get(&path).await.ok()["display_name"], json!("phone"));
    let whois = admin.get(&format!("{A1}/whois/{}", enc(&dan))).await.ok();
    assert!(whois["devices"].get(&device).is_some(), "{whois}");
    admin.delete(&path, json!({})).await.ok();
    admin.get(&path).await.assert_error(404, "M_NOT_FOUND");

    // Login as the user: a working token on a new device.
    let r = admin.post(&format!("{A1}/users/{}/login", enc(&dan)), json!({})).await.ok();
    let puppet = admin.with_token(r["access_token"].as_str().unwrap(), "");
    assert_eq!(puppet.get(&format!("{C}/account/whoami")).await.ok()["user_id"], json!(dan));
    admin.post(&format!("{A1}/users/{}/login", enc(&admin.user_id)), json!({})).await.assert_error(400, "M_UNKNOWN");

    // Deactivate, then reactivate with a password.
    admin.post(&format!("{A1}/deactivate/{}", enc(&dan)), json!({ "erase": true })).await.ok();
    let r = admin.get(&format!("{A2}/users/{}", enc(&dan))).await.ok();
    assert_eq!((r["deactivated"].clone(), r["erased"].clone()), (json!(true), json!(true)));
    puppet.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    let listed = admin.get(&format!("{A2}/users")).await.ok();
    assert!(!listed.to_string().contains(&dan), "deactivated users are listed only on request: {listed}");
    let listed = admin.get(&format!("{A2}/users?deactivated=true")).await.ok();
    assert!(listed.to_string().contains(&dan), "{listed}");
    admin
        .put(&format!("{A2}/users/{}", enc(&dan)), json!({ "deactivated": false }))
        .await
        .assert_error(400, "M_UNKNOWN");
    admin.put(&format!("{A2}/users/{}", enc(&dan)), json!({ "deactivated": false, "password": "pw3" })).await.ok();
    server.login("dan", "pw3").await.ok();
}

#[tokio::test]
async fn shadow_ban_suspension_and_lock() {
    let server = TestServer::start().await;
    let admin = admin(&server, "root").await;
    let alice = server.register("alice").await;
    let troll = server.register("troll").await;
    let room = public_room(&alice).await;
    join(&troll, &room).await;
    let t = enc(&troll.user_id);

    // Shadow-banned: the send seems to work, but the event exists nowhere.
    admin.post(&format!("{A1}/users/{t}/shadow_ban"), json!({})).await.ok();
    let fake = send_text(&troll, &room, "spam").await;
    alice.get(&format!("{C}/rooms/{}/event/{}", enc(&room), enc(&fake))).await.assert_error(404, "M_NOT_FOUND");
    let seen = messages(&alice, &room).await;
    assert!(!seen.to_string().contains("spam"), "{seen}");
    admin.delete(&format!("{A1}/users/{t}/shadow_ban"), json!({})).await.ok();
    let real = send_text(&troll, &room, "hello").await;
    alice.get(&format!("{C}/rooms/{}/event/{}", enc(&room), enc(&real))).await.ok();

    // Suspended (spec endpoint): reads work, writes answer M_USER_SUSPENDED.
    let suspend = format!("/_matrix/client/v1/admin/suspend/{t}");
    assert_eq!(admin.put(&suspend, json!({ "suspended": true })).await.ok()["suspended"], json!(true));
    assert_eq!(admin.get(&suspend).await.ok()["suspended"], json!(true));
    let path = format!("{C}/rooms/{}/send/m.room.message/s1", enc(&room));
    troll.put(&path, json!({ "msgtype": "m.text", "body": "x" })).await.assert_error(403, "M_USER_SUSPENDED");
    troll.post(&format!("{C}/createRoom"), json!({})).await.assert_error(403, "M_USER_SUSPENDED");
    troll.get(&format!("{C}/rooms/{}/messages?dir=b", enc(&room))).await.ok();
    // Their own events they may still redact, not others'; and they may log in again.
    let redact = |event: &str, txn: &str| format!("{C}/rooms/{}/redact/{}/{txn}", enc(&room), enc(event));
    troll.put(&redact(&real, "r1"), json!({})).await.ok();
    let by_alice = send_text(&alice, &room, "mine").await;
    troll.put(&redact(&by_alice, "r2"), json!({})).await.assert_error(403, "M_USER_SUSPENDED");
    server.login("troll", "password").await.ok();
    troll.post(&format!("{C}/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    // Synapse's endpoint lifts it.
    let r = admin.put(&format!("{A1}/suspend/{t}"), json!({ "suspend": false })).await.ok();
    assert_eq!(r[format!("user_{}_suspended", troll.user_id)], json!(false));
    join(&troll, &room).await;
    // Admins cannot be suspended through the spec's endpoint.
    admin
        .put(&format!("/_matrix/client/v1/admin/suspend/{}", enc(&admin.user_id)), json!({ "suspended": true }))
        .await
        .assert_error(403, "M_FORBIDDEN");

    // Locked: everything but logout answers M_USER_LOCKED with soft_logout.
    let lock = format!("/_matrix/client/v1/admin/lock/{t}");
    admin.put(&lock, json!({ "locked": true })).await.ok();
    let r = troll.get(&format!("{C}/account/whoami")).await;
    r.assert_error(401, "M_USER_LOCKED");
    assert_eq!(r.body["soft_logout"], json!(true));
    assert_eq!(admin.get(&format!("{A2}/users/{t}")).await.ok()["locked"], json!(true));
    admin.put(&format!("{A2}/users/{t}"), json!({ "locked": false })).await.ok();
    troll.get(&format!("{C}/account/whoami")).await.ok();
}

#[tokio::test]
async fn room_shutdown_evicts_members_and_blocks_rejoin() {
    let server = TestServer::start().await;
    let admin = admin(&server, "root").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room =
        alice.create_room(json!({ "preset": "public_chat", "name": "Lounge", "room_alias_name": "lounge" })).await;
    join(&bob, &room).await;
    let other = alice.create_room(json!({ "preset": "public_chat", "name": "Attic" })).await;

    let r = admin.get(&format!("{A1}/rooms?order_by=name")).await.ok();
    assert_eq!(r["total_rooms"], json!(2));
    assert_eq!(r["rooms"][0]["room_id"], json!(other));
    let r = admin.get(&format!("{A1}/rooms?search_term=lOUNGE")).await.ok();
    assert_eq!(r["rooms"].as_array().unwrap().len(), 1);
    assert_eq!(r["rooms"][0]["joined_members"], json!(2));
    let r = admin.get(&format!("{A1}/rooms?limit=1")).await.ok();
    assert_eq!(r["next_batch"], json!(1));
    let details = admin.get(&format!("{A1}/rooms/{}", enc(&room))).await.ok();
    assert_eq!((details["name"].clone(), details["creator"].clone()), (json!("Lounge"), json!(alice.user_id)));
    let members = admin.get(&format!("{A1}/rooms/{}/members", enc(&room))).await.ok();
    assert_eq!(members["total"], json!(2));
    let st = admin.get(&format!("{A1}/rooms/{}/state", enc(&room))).await.ok();
    assert!(st["state"].as_array().unwrap().iter().any(|e| e["type"] == json!("m.room.name")), "{st}");

    // make_room_admin: the admin joins with the creator's power.
    admin.post(&format!("{A1}/rooms/{}/make_room_admin", enc(&room)), json!({})).await.ok();
    let pl = admin.get(&format!("{C}/rooms/{}/state/m.room.power_levels", enc(&room))).await.ok();
    assert_eq!(pl["users"][&admin.user_id], json!(100), "{pl}");

    let body = json!({ "block": true, "purge": false, "new_room_user_id": admin.user_id, "message": "moved" });
    let r = admin.delete(&format!("{A2}/rooms/{}", enc(&room)), body).await.ok();
    let delete_id = r["delete_id"].as_str().unwrap();
    let status = admin.get(&format!("{A2}/rooms/delete_status/{delete_id}")).await.ok();
    assert_eq!(status["status"], json!("complete"));
    let kicked = status["shutdown_room"]["kicked_users"].as_array().unwrap();
    for u in [&alice, &bob] {
        assert!(kicked.contains(&json!(u.user_id)), "{status}");
        let joined = u.get(&format!("{C}/joined_rooms")).await.ok();
        assert!(!joined["joined_rooms"].as_array().unwrap().contains(&json!(room)), "{joined}");
        u.join(&room).await.assert_error(403, "M_FORBIDDEN");
    }
    // The evicted users are in the notice room, with the message.
    let new_room = status["shutdown_room"]["new_room_id"].as_str().unwrap();
    let joined = bob.get(&format!("{C}/joined_rooms")).await.ok();
    assert!(joined["joined_rooms"].as_array().unwrap().contains(&json!(new_room)), "{joined}");
    let seen = messages(&bob, new_room).await;
    assert!(seen.to_string().contains("moved"), "{seen}");
    let alias = enc(&format!("#lounge:{}", server.server_name));
    alice.get(&format!("{C}/directory/room/{alias}")).await.assert_error(404, "M_NOT_FOUND");
    assert_eq!(admin.get(&format!("{A1}/rooms/{}/block", enc(&room))).await.ok()["block"], json!(true));

    // v1 with purge: the room is gone.
    let r = admin.delete(&format!("{A1}/rooms/{}", enc(&other)), json!({})).await.ok();
    assert_eq!(r["kicked_users"], json!([alice.user_id]));
    admin.get(&format!("{A1}/rooms/{}", enc(&other))).await.assert_error(404, "M_NOT_FOUND");
    alice.sync("timeout=0").await;
}

async fn messages(user: &TestUser, room: &str) -> Value {
    user.get(&format!("{C}/rooms/{}/messages?dir=b&limit=50", enc(room))).await.ok()
}

/// Deactivation (client and admin) leaves every room; erasure hides the user's messages
/// from those who join later.
#[tokio::test]
async fn deactivation_leaves_rooms() {
    let server = TestServer::start().await;
    let admin = admin(&server, "root").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = public_room(&alice).await;
    join(&bob, &room).await;
    join(&carol, &room).await;
    send_text(&carol, &room, "my secret").await;
    let pusher = json!({ "kind": "http", "app_id": "org.example.app", "pushkey": "k", "app_display_name": "App",
                         "device_display_name": "phone", "lang": "en",
                         "data": { "url": "http://127.0.0.1:9/_matrix/push/v1/notify" } });
    bob.post(&format!("{C}/pushers/set"), pusher).await.ok();
    assert_eq!(plexus::storage::push::pushers(&server.state.db, &bob.user_id).await.unwrap().len(), 1);

    let path = format!("{C}/account/deactivate");
    let r = bob.post(&path, json!({})).await;
    let session = r.body["session"].clone();
    let auth = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": bob.user_id },
                       "password": "password", "session": session });
    bob.post(&path, json!({ "auth": auth })).await.ok();
    admin.post(&format!("{A1}/deactivate/{}", enc(&carol.user_id)), json!({ "erase": true })).await.ok();

    let members = alice.get(&format!("{C}/rooms/{}/joined_members", enc(&room))).await.ok();
    let joined: Vec<&String> = members["joined"].as_object().unwrap().keys().collect();
    assert_eq!(joined, [&alice.user_id]);
    let r = admin.get(&format!("{A2}/users/{}/devices", enc(&bob.user_id))).await.ok();
    assert_eq!(r["total"], json!(0));
    assert!(plexus::storage::push::pushers(&server.state.db, &bob.user_id).await.unwrap().is_empty());

    let seen = messages(&alice, &room).await;
    assert!(seen.to_string().contains("my secret"), "members at the time still see it: {seen}");
    let dave = server.register("dave").await;
    join(&dave, &room).await;
    let seen = messages(&dave, &room).await;
    assert!(!seen.to_string().contains("my secret"), "{seen}");
    let from_carol = seen["chunk"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["sender"] == json!(carol.user_id) && e["type"] == json!("m.room.message"));
    assert_eq!(from_carol.expect("the event, redacted")["content"], json!({}));
}

#[tokio::test]
async fn tokens_reports_media_and_notices() {
    let server = TestServer::start_with(|c| c.admin.server_notices_localpart = Some("notices".into())).await;
    let admin = admin(&server, "root").await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;

    // Registration tokens.
    let t = admin.post(&format!("{A1}/registration_tokens/new"), json!({ "length": 8, "uses_allowed": 2 })).await.ok();
    let token = t["token"].as_str().unwrap().to_owned();
    assert_eq!(token.len(), 8);
    let r = admin.put(&format!("{A1}/registration_tokens/{token}"), json!({ "uses_allowed": null })).await.ok();
    assert_eq!(r["uses_allowed"], json!(null));
    admin
        .post(&format!("{A1}/registration_tokens/new"), json!({ "uses_allowed": -1 }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    admin
        .post(&format!("{A1}/registration_tokens/new"), json!({ "expiry_time": 1 }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    admin
        .post(&format!("{A1}/registration_tokens/new"), json!({ "token": "bad token" }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    let valid = admin.get(&format!("{A1}/registration_tokens?valid=false")).await.ok();
    assert!(valid["registration_tokens"].as_array().unwrap().is_empty());

    // Event reports.
    let room = public_room(&alice).await;
    join(&bob, &room).await;
    let event = send_text(&alice, &room, "rude").await;
    bob.post(&format!("{C}/rooms/{}/report/{}", enc(&room), enc(&event)), json!({ "reason": "rude" })).await.ok();
    let list = admin.get(&format!("{A1}/event_reports")).await.ok();
    assert_eq!(list["total"], json!(1));
    let id = list["event_reports"][0]["id"].as_i64().unwrap();
    let report = admin.get(&format!("{A1}/event_reports/{id}")).await.ok();
    assert_eq!((report["sender"].clone(), report["user_id"].clone()), (json!(alice.user_id), json!(bob.user_id)));
    assert_eq!(report["event_json"]["content"]["body"], json!("rude"));
    admin.delete(&format!("{A1}/event_reports/{id}"), json!({})).await.ok();
    admin.get(&format!("{A1}/event_reports/{id}")).await.assert_error(404, "M_NOT_FOUND");

    // Media: list, quarantine (downloads stop), delete.
    let upload = server
        .client
        .post(format!("{}/_matrix/media/v3/upload", server.base))
        .bearer_auth(&alice.token)
        .header("Content-Type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let media_id = upload["content_uri"].as_str().unwrap().rsplit('/').next().unwrap().to_owned();
    let download = format!("/_matrix/client/v1/media/download/{}/{media_id}", server.server_name);
    alice.get(&download).await;
    let listed = admin.get(&format!("{A1}/users/{}/media", enc(&alice.user_id))).await.ok();
    assert_eq!(listed["media"][0]["media_id"], json!(media_id));
    send_text(&alice, &room, &format!("see mxc://{}/{media_id}", server.server_name)).await;
    let r = admin.post(&format!("{A1}/room/{}/media/quarantine", enc(&room)), json!({})).await.ok();
    assert_eq!(r["num_quarantined"], json!(1));
    let status =
        server.client.get(format!("{}{download}", server.base)).bearer_auth(&bob.token).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 404);
    admin.post(&format!("{A1}/media/unquarantine/{}/{media_id}", server.server_name), json!({})).await.ok();
    let status =
        server.client.get(format!("{}{download}", server.base)).bearer_auth(&bob.token).send().await.unwrap().status();
    assert_eq!(status.as_u16(), 200);
    admin.delete(&format!("{A1}/media/{}/{media_id}", server.server_name), json!({})).await.ok();
    admin
        .delete(&format!("{A1}/media/{}/{media_id}", server.server_name), json!({}))
        .await
        .assert_error(404, "M_NOT_FOUND");
    admin.delete(&format!("{A1}/media/elsewhere.org/{media_id}"), json!({})).await.assert_error(400, "M_INVALID_PARAM");

    // Server notices: an invite to the notices room, then the notice in it.
    let body = json!({ "user_id": bob.user_id, "content": { "msgtype": "m.text", "body": "maintenance" } });
    admin.post(&format!("{A1}/send_server_notice"), body.clone()).await.ok();
    let sync = bob.sync("timeout=0").await;
    let invites = sync["rooms"]["invite"].as_object().expect("an invite");
    let notice_room = invites.keys().next().unwrap().clone();
    bob.join(&notice_room).await.ok();
    admin.post(&format!("{A1}/send_server_notice"), body).await.ok();
    let seen = messages(&bob, &notice_room).await;
    assert_eq!(seen.to_string().matches("maintenance").count(), 2, "{seen}");
    let path = format!("{C}/rooms/{}/send/m.room.message/n1", enc(&notice_room));
    bob.put(&path, json!({ "msgtype": "m.text", "body": "reply" })).await.assert_error(403, "M_FORBIDDEN");
}

/// A room deletion cut short (its process died with the row still `active`) is resumed when
/// the server starts again, as Synapse's task scheduler resumes its active tasks.
#[tokio::test]
async fn interrupted_room_deletion_is_resumed_after_a_restart() {
    let server = TestServer::start().await;
    let admin = admin(&server, "root").await;
    let alice = server.register("alice").await;
    let room = public_room(&alice).await;
    // What `DELETE /v2/rooms` records before it starts: the crash came right after.
    let params = json!({ "requester": admin.user_id, "block": true, "purge": false, "notice": null });
    let mut tx = server.state.db.begin().await.unwrap();
    let now = plexus::storage::now_ms();
    plexus::storage::room_deletions::start(&mut tx, "cut-short", &room, &params.to_string(), now).await.unwrap();
    tx.commit().await.unwrap();

    let server = server.stop_keeping_data().await.start().await;
    let status_path = format!("{A2}/rooms/delete_status/cut-short");
    crate::harness::wait_for("the deletion resumed", async || {
        admin.get(&status_path).await.ok()["status"] == json!("complete")
    })
    .await;
    let status = admin.get(&status_path).await.ok();
    assert_eq!(status["shutdown_room"]["kicked_users"], json!([alice.user_id]), "{status}");
    alice.join(&room).await.assert_error(403, "M_FORBIDDEN");
    let by_room = admin.get(&format!("{A2}/rooms/{}/delete_status", enc(&room))).await.ok();
    assert_eq!(by_room["results"].as_array().unwrap().len(), 1, "{by_room}");
    drop(server);
}
