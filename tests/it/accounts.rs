//! Accounts chapter through HTTP: registration (UIA, availability, token and closed modes,
//! guests), login on several devices, devices, password change, refresh tokens, logout,
//! deactivation, profile, account data, filters, user directory.

use plexus::config::RegistrationMode;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::harness::{Reply, TestServer, TestUser, enc, fed_server, wait_for};

const C: &str = "/_matrix/client/v3";

/// The `auth` object of an `m.login.password` UIA stage.
fn password_auth(user_id: &str, password: &str, session: &Value) -> Value {
    json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": user_id },
        "password": password,
        "session": session,
    })
}

/// Asserts a UIA challenge offering `stage` and returns its session.
#[track_caller]
fn challenge_session(r: &Reply, stage: &str) -> Value {
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    let flows = r.body["flows"].as_array().expect("flows");
    assert!(flows.iter().any(|f| f["stages"].as_array().is_some_and(|s| s.contains(&json!(stage)))), "{r:?}");
    assert!(r.body["session"].is_string(), "{r:?}");
    r.body["session"].clone()
}

/// Runs a request needing password UIA: the challenge, a wrong password (401 with
/// `M_FORBIDDEN`, same session), then the right one; returns the final answer.
async fn with_password_uia(user: &TestUser, method: Method, path: &str, mut body: Value, password: &str) -> Reply {
    let r = user.request(method.clone(), path, Some(&body)).await;
    let session = challenge_session(&r, "m.login.password");
    body["auth"] = password_auth(&user.user_id, "not-the-password", &session);
    let r = user.request(method.clone(), path, Some(&body)).await;
    r.assert_error(401, "M_FORBIDDEN");
    assert_eq!(r.body["session"], session, "a failed stage keeps the session: {r:?}");
    body["auth"] = password_auth(&user.user_id, password, &session);
    user.request(method, path, Some(&body)).await
}

/// Logs in as `localpart` and returns the new device as a `TestUser`.
async fn login_device(server: &TestServer, user: &TestUser, localpart: &str, password: &str) -> TestUser {
    let body = server.login(localpart, password).await.ok();
    assert_eq!(body["user_id"], json!(user.user_id));
    user.with_token(body["access_token"].as_str().expect("token"), body["device_id"].as_str().expect("device"))
}

async fn available(server: &TestServer, name: &str) -> Reply {
    server.get(&format!("{C}/register/available?username={name}")).await
}

async fn validity(server: &TestServer, token: &str) -> Reply {
    server.get(&format!("/_matrix/client/v1/register/m.login.registration_token/validity?token={token}")).await
}

async fn refresh(server: &TestServer, refresh_token: &str) -> Reply {
    let body = json!({ "refresh_token": refresh_token });
    server.request(Method::POST, &format!("{C}/refresh"), None, Some(&body)).await
}

async fn search(user: &TestUser, term: &str, limit: u32) -> Value {
    user.post(&format!("{C}/user_directory/search"), json!({ "search_term": term, "limit": limit })).await.ok()
}

#[tokio::test]
async fn register_login_whoami() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    assert_eq!(alice.user_id, format!("@alice:{}", server.server_name));
    let who = alice.get(&format!("{C}/account/whoami")).await.ok();
    assert_eq!(who["user_id"], json!(alice.user_id));
    assert_eq!(who["device_id"], json!(alice.device_id));
    assert_eq!(who["is_guest"], json!(false));

    let second = server.login("alice", "password").await.ok();
    assert_ne!(second["device_id"], json!(alice.device_id));
    assert_eq!(second["home_server"], json!(server.server_name));
    assert!(second.get("refresh_token").is_none() && second.get("expires_in_ms").is_none(), "{second}");
    // A full user ID works as well as a localpart; the deprecated top-level `user` too.
    server.login(&alice.user_id, "password").await.ok();
    let legacy = json!({ "type": "m.login.password", "user": "alice", "password": "password" });
    server.request(Method::POST, &format!("{C}/login"), None, Some(&legacy)).await.ok();

    server.login("alice", "wrong").await.assert_error(403, "M_FORBIDDEN");
    server.login("nobody", "password").await.assert_error(403, "M_FORBIDDEN");
    let flows = server.get(&format!("{C}/login")).await.ok();
    assert!(flows["flows"].as_array().unwrap().iter().any(|f| f["type"] == "m.login.password"), "{flows}");
    let bad_type = json!({ "type": "m.login.nonsense", "identifier": { "type": "m.id.user", "user": "alice" } });
    server.request(Method::POST, &format!("{C}/login"), None, Some(&bad_type)).await.assert_error(400, "M_UNKNOWN");
}

#[tokio::test]
async fn registration_uia_and_availability() {
    let server = TestServer::start().await;
    assert_eq!(available(&server, "carol").await.ok(), json!({ "available": true }));

    // The challenge offers m.login.dummy; completing it registers.
    let mut body = json!({ "username": "carol", "password": "pw-carol", "inhibit_login": true });
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await;
    let session = challenge_session(&r, "m.login.dummy");
    body["auth"] = json!({ "type": "m.login.dummy", "session": session });
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await.ok();
    assert_eq!(r["user_id"], json!(format!("@carol:{}", server.server_name)));
    assert!(r.get("access_token").is_none(), "inhibit_login gives no token: {r}");

    available(&server, "carol").await.assert_error(400, "M_USER_IN_USE");
    available(&server, "Bad%20Name!").await.assert_error(400, "M_INVALID_USERNAME");
    available(&server, "UPPER").await.assert_error(400, "M_INVALID_USERNAME");
    let taken = json!({ "username": "carol", "password": "x", "auth": { "type": "m.login.dummy" } });
    server.request(Method::POST, &format!("{C}/register"), None, Some(&taken)).await.assert_error(400, "M_USER_IN_USE");
    let invalid = json!({ "username": "no spaces", "password": "x", "auth": { "type": "m.login.dummy" } });
    server
        .request(Method::POST, &format!("{C}/register"), None, Some(&invalid))
        .await
        .assert_error(400, "M_INVALID_USERNAME");
    let unknown_session = json!({ "username": "dave", "password": "x",
                                  "auth": { "type": "m.login.dummy", "session": "no-such-session" } });
    server
        .request(Method::POST, &format!("{C}/register"), None, Some(&unknown_session))
        .await
        .assert_error(400, "M_UNKNOWN");

    // Registration with a chosen device ID and a refresh token.
    let body = json!({ "username": "erin", "password": "pw", "device_id": "ERINPHONE", "refresh_token": true,
                       "auth": { "type": "m.login.dummy" } });
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await.ok();
    assert_eq!(r["device_id"], json!("ERINPHONE"));
    assert!(r["refresh_token"].is_string() && r["expires_in_ms"].is_i64(), "{r}");
    server.login("erin", "pw").await.ok();
}

#[tokio::test]
async fn guests_are_refused_unless_enabled() {
    let server = TestServer::start().await;
    server
        .request(Method::POST, &format!("{C}/register?kind=guest"), None, Some(&json!({})))
        .await
        .assert_error(403, "M_FORBIDDEN");

    let server = TestServer::start_with(|c| c.registration.allow_guests = true).await;
    let r = server.request(Method::POST, &format!("{C}/register?kind=guest"), None, Some(&json!({}))).await.ok();
    let token = r["access_token"].as_str().expect("guest token");
    let who = server.request(Method::GET, &format!("{C}/account/whoami"), Some(token), None).await.ok();
    assert_eq!(who["is_guest"], json!(true));
}

#[tokio::test]
async fn closed_registration() {
    let server = TestServer::start_with(|c| c.registration.mode = RegistrationMode::Closed).await;
    let body = json!({ "username": "frank", "password": "pw", "auth": { "type": "m.login.dummy" } });
    server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await.assert_error(403, "M_FORBIDDEN");
    server
        .get("/_matrix/client/v1/register/m.login.registration_token/validity?token=x")
        .await
        .assert_error(403, "M_FORBIDDEN");
}

#[tokio::test]
async fn token_registration() {
    let server = TestServer::start_with(|c| c.registration.mode = RegistrationMode::Token).await;
    let db = plexus::storage::Db::connect(&server.config.database.url, 1).await.expect("db");
    let mut tx = db.begin().await.unwrap();
    assert!(plexus::storage::registration_tokens::create(&mut tx, "one-use", Some(1), None).await.unwrap());
    let past = plexus::storage::now_ms() - 1000;
    assert!(plexus::storage::registration_tokens::create(&mut tx, "expired", None, Some(past)).await.unwrap());
    tx.commit().await.unwrap();

    assert_eq!(validity(&server, "one-use").await.ok(), json!({ "valid": true }));
    assert_eq!(validity(&server, "expired").await.ok(), json!({ "valid": false }));
    assert_eq!(validity(&server, "unknown").await.ok(), json!({ "valid": false }));

    let mut body = json!({ "username": "gina", "password": "pw" });
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await;
    let session = challenge_session(&r, "m.login.registration_token");
    assert!(
        !r.body["flows"].as_array().unwrap().iter().any(|f| f["stages"] == json!(["m.login.dummy"])),
        "token mode offers no dummy flow: {r:?}"
    );
    // m.login.dummy is not a stage of this flow.
    body["auth"] = json!({ "type": "m.login.dummy", "session": session });
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    for bad in ["unknown", "expired"] {
        body["auth"] = json!({ "type": "m.login.registration_token", "token": bad, "session": session });
        let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await;
        r.assert_error(401, "M_FORBIDDEN");
    }
    body["auth"] = json!({ "type": "m.login.registration_token", "token": "one-use", "session": session });
    let r = server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await.ok();
    assert_eq!(r["user_id"], json!(format!("@gina:{}", server.server_name)));

    // Its one use is spent.
    assert_eq!(validity(&server, "one-use").await.ok(), json!({ "valid": false }));
    let stored = plexus::storage::registration_tokens::get(&db, "one-use").await.unwrap().expect("token");
    assert_eq!(stored.completed, 1);
    let body = json!({ "username": "hugo", "password": "pw",
                       "auth": { "type": "m.login.registration_token", "token": "one-use" } });
    server.request(Method::POST, &format!("{C}/register"), None, Some(&body)).await.assert_error(401, "M_FORBIDDEN");
}

/// The issue's "done when": register, log in on two devices, list and delete one, change
/// the password, set a display name and account data, log out.
#[tokio::test]
async fn two_devices_password_profile_logout() {
    let server = TestServer::start().await;
    let one = server.register("ivy").await;
    let two = login_device(&server, &one, "ivy", "password").await;

    let devices = two.get(&format!("{C}/devices")).await.ok();
    let ids: Vec<&str> =
        devices["devices"].as_array().unwrap().iter().map(|d| d["device_id"].as_str().unwrap()).collect();
    assert!(ids.contains(&one.device_id.as_str()) && ids.contains(&two.device_id.as_str()), "{devices}");
    assert_eq!(ids.len(), 2);

    let path = format!("{C}/devices/{}", one.device_id);
    two.put(&path, json!({ "display_name": "old phone" })).await.ok();
    assert_eq!(two.get(&path).await.ok()["display_name"], json!("old phone"));
    // Without display_name the name stays.
    two.put(&path, json!({})).await.ok();
    assert_eq!(two.get(&path).await.ok()["display_name"], json!("old phone"));
    two.put(&format!("{C}/devices/NOSUCHDEVICE"), json!({ "display_name": "x" }))
        .await
        .assert_error(404, "M_NOT_FOUND");
    two.get(&format!("{C}/devices/NOSUCHDEVICE")).await.assert_error(404, "M_NOT_FOUND");

    let r = with_password_uia(&two, Method::DELETE, &path, json!({}), "password").await;
    r.ok();
    two.get(&path).await.assert_error(404, "M_NOT_FOUND");
    one.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");

    // Password change keeping the other sessions.
    let three = login_device(&server, &two, "ivy", "password").await;
    let body = json!({ "new_password": "second", "logout_devices": false });
    with_password_uia(&two, Method::POST, &format!("{C}/account/password"), body, "password").await.ok();
    server.login("ivy", "password").await.assert_error(403, "M_FORBIDDEN");
    three.get(&format!("{C}/account/whoami")).await.ok();
    // ... and logging them out (the default).
    let body = json!({ "new_password": "third" });
    with_password_uia(&two, Method::POST, &format!("{C}/account/password"), body, "second").await.ok();
    three.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    two.get(&format!("{C}/account/whoami")).await.ok();
    let four = login_device(&server, &two, "ivy", "third").await;

    // Profile.
    two.put(&format!("{C}/profile/{}/displayname", two.user_id), json!({ "displayname": "Ivy" })).await.ok();
    two.put(&format!("{C}/profile/{}/avatar_url", two.user_id), json!({ "avatar_url": "mxc://x/y" })).await.ok();
    let profile = server.get(&format!("{C}/profile/{}", two.user_id)).await.ok();
    assert_eq!(profile, json!({ "displayname": "Ivy", "avatar_url": "mxc://x/y" }));
    let name = server.get(&format!("{C}/profile/{}/displayname", two.user_id)).await.ok();
    assert_eq!(name, json!({ "displayname": "Ivy" }));

    // Account data.
    let data = format!("{C}/user/{}/account_data/org.example.settings", two.user_id);
    two.put(&data, json!({ "theme": "dark" })).await.ok();
    assert_eq!(four.get(&data).await.ok(), json!({ "theme": "dark" }));

    // Log out one device, then all.
    two.post(&format!("{C}/logout"), json!({})).await.ok();
    two.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    four.get(&format!("{C}/account/whoami")).await.ok();
    let five = login_device(&server, &two, "ivy", "third").await;
    five.post(&format!("{C}/logout/all"), json!({})).await.ok();
    for user in [&four, &five] {
        user.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    }
}

#[tokio::test]
async fn delete_devices_in_bulk() {
    let server = TestServer::start().await;
    let one = server.register("jack").await;
    let two = login_device(&server, &one, "jack", "password").await;
    let three = login_device(&server, &one, "jack", "password").await;
    let body = json!({ "devices": [two.device_id, three.device_id] });
    with_password_uia(&one, Method::POST, &format!("{C}/delete_devices"), body, "password").await.ok();
    let devices = one.get(&format!("{C}/devices")).await.ok();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1, "{devices}");
    two.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    // Another user's password does not pass this user's UIA.
    let other = server.register("kate").await;
    let r = one.delete(&format!("{C}/devices/{}", one.device_id), json!({})).await;
    let session = challenge_session(&r, "m.login.password");
    let auth = password_auth(&other.user_id, "password", &session);
    one.delete(&format!("{C}/devices/{}", one.device_id), json!({ "auth": auth }))
        .await
        .assert_error(401, "M_FORBIDDEN");
}

#[tokio::test]
async fn device_last_seen_is_recorded_and_throttled() {
    let server = TestServer::start().await;
    let user = server.register("liam").await;
    user.get(&format!("{C}/account/whoami")).await.ok();
    let path = format!("{C}/devices/{}", user.device_id);
    let first = user.get(&path).await.ok();
    assert_eq!(first["last_seen_ip"], json!("127.0.0.1"), "{first}");
    let seen = first["last_seen_ts"].as_i64().expect("last_seen_ts");
    assert!((plexus::storage::now_ms() - seen).abs() < 60_000, "{first}");
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    user.get(&format!("{C}/account/whoami")).await.ok();
    // Within the throttle interval the stored time does not move.
    assert_eq!(user.get(&path).await.ok()["last_seen_ts"], json!(seen));
    // A device that made no request yet has no last-seen fields (not nulls).
    let other = server.login("liam", "password").await.ok();
    let other_path = format!("{C}/devices/{}", other["device_id"].as_str().unwrap());
    let unseen = user.get(&other_path).await.ok();
    assert!(unseen.get("last_seen_ts").is_none() && unseen.get("last_seen_ip").is_none(), "{unseen}");
}

#[tokio::test]
async fn refresh_tokens() {
    let server = TestServer::start().await;
    let user = server.register("mia").await;
    let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "mia" },
                       "password": "password", "refresh_token": true });
    let login = server.request(Method::POST, &format!("{C}/login"), None, Some(&body)).await.ok();
    assert!(login["expires_in_ms"].as_i64().is_some_and(|ms| ms > 0), "{login}");
    let device = login["device_id"].as_str().unwrap().to_owned();
    let as_device = |token: &str| user.with_token(token, &device);
    let (a1, r1) = (login["access_token"].as_str().unwrap(), login["refresh_token"].as_str().unwrap());
    as_device(a1).get(&format!("{C}/account/whoami")).await.ok();

    let second = refresh(&server, r1).await.ok();
    assert!(second["expires_in_ms"].as_i64().is_some_and(|ms| ms > 0), "{second}");
    let (a2, r2) = (second["access_token"].as_str().unwrap(), second["refresh_token"].as_str().unwrap());
    as_device(a1).get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    // The answer was "lost": the old refresh token still works, and what it gave before ends.
    let third = refresh(&server, r1).await.ok();
    let (a3, r3) = (third["access_token"].as_str().unwrap(), third["refresh_token"].as_str().unwrap());
    as_device(a2).get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    refresh(&server, r2).await.assert_error(401, "M_UNKNOWN_TOKEN");
    // Using the new access token revokes the old refresh token.
    let who = as_device(a3).get(&format!("{C}/account/whoami")).await.ok();
    assert_eq!(who["device_id"], json!(device));
    refresh(&server, r1).await.assert_error(401, "M_UNKNOWN_TOKEN");
    // Using the new refresh token does too.
    let fourth = refresh(&server, r3).await.ok();
    let r4 = fourth["refresh_token"].as_str().unwrap();
    refresh(&server, r4).await.ok();
    refresh(&server, r3).await.assert_error(401, "M_UNKNOWN_TOKEN");
    refresh(&server, "plx_not_a_token").await.assert_error(401, "M_UNKNOWN_TOKEN");
}

#[tokio::test]
async fn deactivation() {
    let server = TestServer::start().await;
    let user = server.register("noah").await;
    let other = login_device(&server, &user, "noah", "password").await;
    user.put(&format!("{C}/profile/{}/displayname", user.user_id), json!({ "displayname": "Noah" })).await.ok();
    let r = with_password_uia(&user, Method::POST, &format!("{C}/account/deactivate"), json!({}), "password").await;
    assert_eq!(r.ok()["id_server_unbind_result"], json!("no-support"));
    for u in [&user, &other] {
        u.get(&format!("{C}/account/whoami")).await.assert_error(401, "M_UNKNOWN_TOKEN");
    }
    server.login("noah", "password").await.assert_error(403, "M_USER_DEACTIVATED");
    server.get(&format!("{C}/register/available?username=noah")).await.assert_error(400, "M_USER_IN_USE");
    let again = json!({ "username": "noah", "password": "x", "auth": { "type": "m.login.dummy" } });
    server.request(Method::POST, &format!("{C}/register"), None, Some(&again)).await.assert_error(400, "M_USER_IN_USE");
    server.get(&format!("{C}/profile/{}", user.user_id)).await.assert_error(404, "M_NOT_FOUND");
}

#[tokio::test]
async fn profile_rules() {
    let server = TestServer::start().await;
    let user = server.register("olga").await;
    let other = server.register("paul").await;
    let name = format!("{C}/profile/{}/displayname", user.user_id);
    // A new account's display name is its localpart.
    assert_eq!(server.get(&name).await.ok(), json!({ "displayname": "olga" }));
    user.put(&name, json!({})).await.assert_error(400, "M_MISSING_PARAM");
    user.put(&name, json!({ "displayname": 5 })).await.assert_error(400, "M_BAD_JSON");
    other.put(&name, json!({ "displayname": "hijack" })).await.assert_error(403, "M_FORBIDDEN");
    let avatar = format!("{C}/profile/{}/avatar_url", user.user_id);
    user.put(&avatar, json!({ "avatar_url": "https://not.mxc/x" })).await.assert_error(400, "M_BAD_JSON");
    server.get(&avatar).await.assert_error(404, "M_NOT_FOUND");
    user.put(&name, json!({ "displayname": null })).await.ok();
    assert_eq!(server.get(&format!("{C}/profile/{}", user.user_id)).await.ok(), json!({}));
    server.get(&format!("{C}/profile/@nobody:{}", server.server_name)).await.assert_error(404, "M_NOT_FOUND");
    server.get(&format!("{C}/profile/not-a-user-id")).await.assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn account_data_rules() {
    let server = TestServer::start().await;
    let user = server.register("quinn").await;
    let other = server.register("rita").await;
    let global = format!("{C}/user/{}/account_data/org.example.a", user.user_id);
    user.get(&global).await.assert_error(404, "M_NOT_FOUND");
    user.put(&global, json!({ "a": 1 })).await.ok();
    user.put(&global, json!({ "a": 2 })).await.ok();
    assert_eq!(user.get(&global).await.ok(), json!({ "a": 2 }));
    user.put(&global, json!([1, 2])).await.assert_error(400, "M_BAD_JSON");
    other.get(&global).await.assert_error(403, "M_FORBIDDEN");
    other.put(&global, json!({ "a": 3 })).await.assert_error(403, "M_FORBIDDEN");
    user.put(&format!("{C}/user/{}/account_data/m.push_rules", user.user_id), json!({}))
        .await
        .assert_error(405, "M_BAD_JSON");

    let room = format!("{C}/user/{}/rooms/!room:{}/account_data/org.example.r", user.user_id, server.server_name);
    user.put(&room, json!({ "b": 2 })).await.ok();
    assert_eq!(user.get(&room).await.ok(), json!({ "b": 2 }));
    // Per-room data is separate from global data of the same type.
    user.get(&format!("{C}/user/{}/account_data/org.example.r", user.user_id)).await.assert_error(404, "M_NOT_FOUND");
    other.get(&room).await.assert_error(403, "M_FORBIDDEN");
    let fully_read = format!("{C}/user/{}/rooms/!room:{}/account_data/m.fully_read", user.user_id, server.server_name);
    user.put(&fully_read, json!({ "event_id": "$x" })).await.assert_error(405, "M_BAD_JSON");
    let bad_room = format!("{C}/user/{}/rooms/not-a-room/account_data/org.example.r", user.user_id);
    user.put(&bad_room, json!({})).await.assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn filters() {
    let server = TestServer::start().await;
    let user = server.register("sam").await;
    let other = server.register("tess").await;
    let filter = json!({ "room": { "timeline": { "limit": 7, "types": ["m.room.message"] } },
                         "event_fields": ["type", "content"] });
    let r = user.post(&format!("{C}/user/{}/filter", user.user_id), filter.clone()).await.ok();
    let id = r["filter_id"].as_str().expect("filter_id is a string");
    assert_eq!(user.get(&format!("{C}/user/{}/filter/{id}", user.user_id)).await.ok(), filter);
    let r2 = user.post(&format!("{C}/user/{}/filter", user.user_id), json!({})).await.ok();
    assert_ne!(r2["filter_id"], json!(id));

    user.get(&format!("{C}/user/{}/filter/999999", user.user_id)).await.assert_error(404, "M_NOT_FOUND");
    user.get(&format!("{C}/user/{}/filter/abc", user.user_id)).await.assert_error(404, "M_NOT_FOUND");
    other.get(&format!("{C}/user/{}/filter/{id}", user.user_id)).await.assert_error(403, "M_FORBIDDEN");
    // Filters are per user: the same ID of another user is not this one.
    other.get(&format!("{C}/user/{}/filter/{id}", other.user_id)).await.assert_error(404, "M_NOT_FOUND");
    other.post(&format!("{C}/user/{}/filter", user.user_id), json!({})).await.assert_error(403, "M_FORBIDDEN");
    let invalid = json!({ "room": { "timeline": { "limit": "seven" } } });
    user.post(&format!("{C}/user/{}/filter", user.user_id), invalid).await.assert_error(400, "M_BAD_JSON");
}

#[tokio::test]
async fn user_directory_search() {
    let server = TestServer::start_with(|c| c.user_directory.search_all_users = true).await;
    let searcher = server.register("uma").await;
    let bob = server.register("bob").await;
    server.register("a_b").await;
    server.register("axb").await;
    let gone = server.register("bobgone").await;
    bob.put(&format!("{C}/profile/{}/displayname", bob.user_id), json!({ "displayname": "Bobby Tables" })).await.ok();
    let r = search(&searcher, "TABLES", 10).await;
    assert_eq!(r["results"], json!([{ "user_id": bob.user_id, "display_name": "Bobby Tables" }]));
    assert_eq!(r["limited"], json!(false));
    // `_` is matched literally, not as a wildcard.
    let r = search(&searcher, "a_b", 10).await;
    let ids: Vec<&Value> = r["results"].as_array().unwrap().iter().map(|u| &u["user_id"]).collect();
    assert_eq!(ids, [&json!(format!("@a_b:{}", server.server_name))]);

    with_password_uia(&gone, Method::POST, &format!("{C}/account/deactivate"), json!({}), "password").await.ok();
    let r = search(&searcher, "bob", 1).await;
    assert_eq!(r["results"].as_array().unwrap().len(), 1);
    assert_eq!(r["limited"], json!(false), "deactivated users are not found: {r}");
    let r = search(&searcher, "b", 1).await;
    assert_eq!(r["limited"], json!(true), "{r}");
    server
        .request(Method::POST, &format!("{C}/user_directory/search"), None, Some(&json!({ "search_term": "b" })))
        .await
        .assert_error(401, "M_MISSING_TOKEN");
}

/// Without `search_all_users` (the default), the directory holds the users who share a room
/// with the searcher or are in a public room, other servers' users among them (with the
/// profile their member events show).
#[tokio::test]
async fn user_directory_scope_and_remote_users() {
    let a = fed_server("127.0.0.1").await;
    let b = fed_server("127.0.0.2").await;
    let alice = a.register("alice").await;
    let eve = a.register("eve").await;
    let dora = a.register("dora").await;
    let bob = b.register("bob").await;
    let lobby = alice.create_room(json!({ "preset": "public_chat" })).await;
    let path = format!("{C}/join/{}?via={}", enc(&lobby), enc(&a.server_name));
    bob.post(&path, json!({})).await.ok();
    bob.put(&format!("{C}/profile/{}/displayname", enc(&bob.user_id)), json!({ "displayname": "Bobby Remote" }))
        .await
        .ok();
    let private = alice.create_room(json!({ "preset": "private_chat" })).await;
    alice.post(&format!("{C}/rooms/{}/invite", enc(&private)), json!({ "user_id": eve.user_id })).await.ok();
    eve.join(&private).await.ok();

    let remote = json!([{ "user_id": bob.user_id, "display_name": "Bobby Remote" }]);
    wait_for("the remote profile change", async || search(&alice, "bobby", 10).await["results"] == remote).await;
    // A user in a public room is found by anyone.
    assert_eq!(search(&dora, "BOBBY", 10).await["results"], remote);
    assert_eq!(search(&dora, &bob.user_id, 10).await["results"], remote);
    // A user sharing only a private room is found by its members only.
    let found = search(&alice, "eve", 10).await;
    assert_eq!(found["results"][0]["user_id"], json!(eve.user_id), "{found}");
    assert_eq!(search(&dora, "eve", 10).await["results"], json!([]));
    // One with no room at all is found by no one.
    assert_eq!(search(&alice, "dora", 10).await["results"], json!([]));
}

#[tokio::test]
async fn discovery_and_capabilities() {
    let server = TestServer::start().await;
    let versions = server.get("/_matrix/client/versions").await.ok();
    assert!(versions["versions"].as_array().unwrap().contains(&json!("v1.1")), "{versions}");
    let client = server.get("/.well-known/matrix/client").await.ok();
    assert_eq!(client["m.homeserver"]["base_url"], json!(format!("http://{}", server.server_name)));
    let fed = server.get("/.well-known/matrix/server").await.ok();
    assert_eq!(fed["m.server"], json!(server.server_name));
    server.get(&format!("{C}/capabilities")).await.assert_error(401, "M_MISSING_TOKEN");
    let user = server.register("vera").await;
    let caps = user.get(&format!("{C}/capabilities")).await.ok();
    assert_eq!(caps["capabilities"]["m.change_password"]["enabled"], json!(true));
    let rooms = &caps["capabilities"]["m.room_versions"];
    assert!(rooms["available"].get(rooms["default"].as_str().unwrap()).is_some(), "{caps}");
    assert_eq!(user.get(&format!("{C}/account/3pid")).await.ok(), json!({ "threepids": [] }));
}
