//! The send path under concurrency: appends of many rooms share transactions (group
//! commit) and read the rooms' heads from memory; access tokens resolve from memory. What
//! the memory says must stay what the database says, and every change must show at once.

use std::collections::HashSet;

use reqwest::Method;
use ruma::RoomId;
use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser, enc};

const C: &str = "/_matrix/client/v3";

async fn send(user: &TestUser, room: &str, txn: &str, body: &str) -> String {
    let path = format!("{C}/rooms/{}/send/m.room.message/{txn}", enc(room));
    let r = user.put(&path, json!({ "msgtype": "m.text", "body": body })).await.ok();
    r["event_id"].as_str().expect("event_id").to_owned()
}

/// The bodies of a room's messages, oldest first.
async fn bodies(user: &TestUser, room: &str) -> Vec<String> {
    let path = format!("{C}/rooms/{}/messages?dir=f&limit=1000", enc(room));
    let page = user.get(&path).await.ok();
    page["chunk"]
        .as_array()
        .expect("chunk")
        .iter()
        .filter(|e| e["type"] == "m.room.message")
        .map(|e| e["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

/// The room's head as kept in memory, and as read again from the database.
async fn head_in_memory_and_stored(server: &TestServer, room: &str) -> (Value, Value) {
    let describe = |head: &plexus::rooms::head::Head| {
        let prevs: Vec<String> = head.prevs.iter().map(|p| p.event_id.to_string()).collect();
        let members: Vec<(String, String, String)> =
            head.members.iter().map(|(u, m)| (u.clone(), m.membership.clone(), m.event_id.clone())).collect();
        let state: std::collections::BTreeSet<String> = head.state.values().map(ToString::to_string).collect();
        json!({ "version": head.version, "group": head.group, "prevs": prevs, "members": members, "state": state })
    };
    let room_id = RoomId::parse(room).unwrap();
    let cached = describe(&plexus::rooms::head::load(&server.state, &room_id).await.unwrap());
    plexus::rooms::head::forget(&server.state, &room_id);
    let stored = describe(&plexus::rooms::head::load(&server.state, &room_id).await.unwrap());
    (cached, stored)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_sends_commit_in_order_and_heads_match_the_database() {
    let server = TestServer::start().await;
    let mut users = Vec::new();
    for i in 0..8 {
        users.push(server.register(&format!("sender{i}")).await);
    }
    let shared = users[0].create_room(json!({ "preset": "public_chat" })).await;
    let mut own = Vec::new();
    for user in &users {
        own.push(user.create_room(json!({})).await);
        if user.user_id != users[0].user_id {
            user.post(&format!("{C}/join/{}", enc(&shared)), json!({})).await.ok();
        }
    }

    // Every user sends to their own room and to the shared one at the same time as the others.
    let sends = users.iter().zip(&own).enumerate().map(|(i, (user, room))| {
        let shared = shared.clone();
        async move {
            let mut ids = Vec::new();
            for n in 0..12 {
                ids.push(send(user, room, &format!("own{n}"), &format!("m{n}")).await);
                if n % 3 == 0 {
                    ids.push(send(user, &shared, &format!("shared{n}"), &format!("u{i} s{n}")).await);
                }
            }
            ids
        }
    });
    let ids: Vec<String> = futures::future::join_all(sends).await.into_iter().flatten().collect();
    assert_eq!(ids.len(), 8 * 16);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), ids.len(), "event IDs repeat");

    for (user, room) in users.iter().zip(&own) {
        let expected: Vec<String> = (0..12).map(|n| format!("m{n}")).collect();
        assert_eq!(bodies(user, room).await, expected);
    }
    let shared_bodies = bodies(&users[0], &shared).await;
    assert_eq!(shared_bodies.len(), 8 * 4, "{shared_bodies:?}");
    for i in 0..8 {
        let mine: Vec<&String> = shared_bodies.iter().filter(|b| b.starts_with(&format!("u{i} "))).collect();
        let expected: Vec<String> = [0, 3, 6, 9].iter().map(|n| format!("u{i} s{n}")).collect();
        assert_eq!(mine, expected.iter().collect::<Vec<_>>(), "one sender's messages out of order");
    }

    // A retried transaction ID gives the same event, even when both tries race.
    let (a, b) = tokio::join!(send(&users[1], &own[1], "again", "once"), send(&users[1], &own[1], "again", "once"));
    assert_eq!(a, b);
    assert_eq!(bodies(&users[1], &own[1]).await.iter().filter(|b| *b == "once").count(), 1);

    // What memory says of each room is what the database says.
    for room in own.iter().chain([&shared]) {
        let (cached, stored) = head_in_memory_and_stored(&server, room).await;
        assert_eq!(cached, stored, "head of {room}");
    }
    let (cached, _) = head_in_memory_and_stored(&server, &shared).await;
    assert_eq!(cached["members"].as_array().unwrap().len(), 8);
    assert_eq!(cached["prevs"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn membership_changes_reach_the_head() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    send(&alice, &room, "t0", "before").await;
    bob.post(&format!("{C}/join/{}", enc(&room)), json!({})).await.ok();
    // Bob is a member now: Alice's message notifies him (push rules read the head's members).
    send(&alice, &room, "t1", "hello bob").await;
    let sync = bob.sync("").await;
    assert_eq!(sync["rooms"]["join"][&room]["unread_notifications"]["notification_count"], json!(1), "{sync}");
    bob.post(&format!("{C}/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    send(&alice, &room, "t2", "bye").await;
    let (cached, stored) = head_in_memory_and_stored(&server, &room).await;
    assert_eq!(cached, stored);
    let members = cached["members"].as_array().unwrap();
    assert!(members.iter().any(|m| m[0] == json!(bob.user_id) && m[1] == json!("leave")), "{members:?}");
    // A state event's stored form (with what it replaced) is what later reads see.
    let path = format!("{C}/rooms/{}/state/m.room.topic/", enc(&room));
    alice.put(&path, json!({ "topic": "one" })).await.ok();
    let second = alice.put(&path, json!({ "topic": "two" })).await.ok()["event_id"].as_str().unwrap().to_owned();
    let event = alice.get(&format!("{C}/rooms/{}/event/{}", enc(&room), enc(&second))).await.ok();
    assert_eq!(event["unsigned"]["prev_content"], json!({ "topic": "one" }), "{event}");
}

#[tokio::test]
async fn token_changes_show_at_once_after_the_token_was_used() {
    let server = TestServer::start().await;
    let root = server.register("root").await;
    let mut tx = server.state.db.begin().await.unwrap();
    plexus::storage::users::set_admin(&mut tx, &root.user_id, true).await.unwrap();
    tx.commit().await.unwrap();
    let carol = server.register("carol").await;
    let whoami = format!("{C}/account/whoami");
    let admin_path = format!("/_synapse/admin/v2/users/{}", enc(&carol.user_id));

    // Each change comes after Carol's token was used (and so resolved once already).
    carol.get(&whoami).await.ok();
    carol.get(&admin_path).await.assert_error(403, "M_FORBIDDEN");
    root.put(&admin_path, json!({ "admin": true })).await.ok();
    carol.get(&admin_path).await.ok();
    root.put(&admin_path, json!({ "admin": false })).await.ok();
    carol.get(&admin_path).await.assert_error(403, "M_FORBIDDEN");

    let t = enc(&carol.user_id);
    root.put(&format!("/_matrix/client/v1/admin/suspend/{t}"), json!({ "suspended": true })).await.ok();
    carol.post(&format!("{C}/createRoom"), json!({})).await.assert_error(403, "M_USER_SUSPENDED");
    root.put(&format!("/_matrix/client/v1/admin/suspend/{t}"), json!({ "suspended": false })).await.ok();
    carol.post(&format!("{C}/createRoom"), json!({})).await.ok();

    // A second device deleted by the first: its token ends.
    let body = json!({
        "type": "m.login.password",
        "identifier": { "type": "m.id.user", "user": "carol" },
        "password": "password",
    });
    let login = server.request(Method::POST, &format!("{C}/login"), None, Some(&body)).await.ok();
    let second = carol.with_token(login["access_token"].as_str().unwrap(), login["device_id"].as_str().unwrap());
    second.get(&whoami).await.ok();
    root.delete(&format!("/_synapse/admin/v2/users/{t}/devices/{}", second.device_id), json!({})).await.ok();
    second.get(&whoami).await.assert_error(401, "M_UNKNOWN_TOKEN");

    root.put(&admin_path, json!({ "deactivated": true })).await.ok();
    carol.get(&whoami).await.assert_error(401, "M_UNKNOWN_TOKEN");
}

/// Sends a message and hangs up once the server is handling it: the body goes after the
/// server's `100 Continue` (sent when the handler reads the body), and the connection is
/// closed right after it, without waiting for the answer.
async fn send_and_hang_up(server: &TestServer, user: &TestUser, room: &str, txn: &str, body: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let content = json!({ "msgtype": "m.text", "body": body }).to_string();
    let head = format!(
        "PUT {C}/rooms/{}/send/m.room.message/{txn} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nExpect: 100-continue\r\n\r\n",
        enc(room),
        server.server_name,
        user.token,
        content.len()
    );
    let mut conn = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut interim = Vec::new();
    while !interim.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        assert_eq!(conn.read(&mut byte).await.unwrap(), 1, "the server closed before 100 Continue");
        interim.push(byte[0]);
    }
    assert!(interim.starts_with(b"HTTP/1.1 100"), "{}", String::from_utf8_lossy(&interim));
    conn.write_all(content.as_bytes()).await.unwrap();
    conn.shutdown().await.unwrap();
}

/// `count` users, each in a room of their own.
async fn users_in_rooms_of_their_own(server: &TestServer, prefix: &str, count: usize) -> Vec<(TestUser, String)> {
    let mut users = Vec::new();
    for i in 0..count {
        let user = server.register(&format!("{prefix}{i}")).await;
        let room = user.create_room(json!({})).await;
        users.push((user, room));
    }
    users
}

/// While `beside` runs, each user sends twenty messages into their room: all are stored.
async fn send_twenty_each_beside(users: &[(TestUser, String)], word: &str, beside: impl Future<Output = ()>) {
    let sends = futures::future::join_all(users.iter().map(|(user, room)| async move {
        for i in 0..20 {
            send(user, room, &format!("{word}{i}"), &format!("{word} {i}")).await;
        }
    }));
    tokio::join!(beside, sends);
    for (user, room) in users {
        let expected: Vec<String> = (0..20).map(|i| format!("{word} {i}")).collect();
        assert_eq!(bodies(user, room).await, expected);
    }
}

/// A client that hangs up while its send is being written must neither lose that send nor
/// fail the sends of other rooms that share its group commit: a write is finished even
/// when nobody waits for its answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_send_whose_client_hangs_up_is_stored_and_fails_no_other_send() {
    let server = TestServer::start().await;
    let users = users_in_rooms_of_their_own(&server, "hangup", 4).await;
    let (quitter, quitter_room) = &users[0];
    let quitters = async {
        for i in 0..20 {
            send_and_hang_up(&server, quitter, quitter_room, &format!("gone{i}"), &format!("gone {i}")).await;
            tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        }
    };
    send_twenty_each_beside(&users[1..], "stay", quitters).await;
    let expected: HashSet<String> = (0..20).map(|i| format!("gone {i}")).collect();
    crate::harness::wait_for("every hung-up send stored", async || {
        bodies(quitter, quitter_room).await.into_iter().collect::<HashSet<_>>() == expected
    })
    .await;
}

/// An append whose write fails (here a database trigger rejects it) fails alone: the sends of
/// other rooms that share its group commit are stored and answered, and the room it was sent
/// to takes further sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_that_fails_to_be_written_fails_no_other_send() {
    let server = TestServer::start().await;
    let poison = match server.state.db.kind {
        plexus::storage::DbKind::Sqlite => vec![
            "CREATE TRIGGER poison BEFORE INSERT ON events WHEN NEW.json LIKE '%poison pill%'
             BEGIN SELECT RAISE(ABORT, 'poison pill'); END",
        ],
        plexus::storage::DbKind::Postgres => vec![
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS
             'BEGIN RAISE EXCEPTION ''poison pill''; END'",
            "CREATE TRIGGER poison BEFORE INSERT ON events FOR EACH ROW
             WHEN (NEW.json LIKE '%poison pill%') EXECUTE FUNCTION poison()",
        ],
    };
    let mut tx = server.state.db.begin().await.unwrap();
    for statement in poison {
        sqlx::query(statement).execute(&mut *tx).await.unwrap();
    }
    tx.commit().await.unwrap();
    let users = users_in_rooms_of_their_own(&server, "pill", 5).await;
    let (poisoner, poisoned_room) = &users[0];
    let poisoned = async {
        for i in 0..20 {
            let content = json!({ "msgtype": "m.text", "body": format!("poison pill {i}") });
            let path = format!("{C}/rooms/{}/send/m.room.message/pill{i}", enc(poisoned_room));
            let reply = poisoner.request(Method::PUT, &path, Some(&content)).await;
            assert_eq!(reply.status, 500, "{:?}", reply.body);
        }
    };
    send_twenty_each_beside(&users[1..], "fine", poisoned).await;
    send(poisoner, poisoned_room, "after", "after the pills").await;
    assert_eq!(bodies(poisoner, poisoned_room).await, vec!["after the pills".to_owned()]);
}
