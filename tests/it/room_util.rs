//! Room helpers shared by the test modules of the room features around the core.

use serde_json::{Value, json};

use crate::harness::TestUser;

pub const C: &str = "/_matrix/client/v3";

/// Percent-encodes a path segment (room IDs, aliases, event IDs).
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// Creates a room with a createRoom body; returns its ID.
pub async fn create_room(user: &TestUser, body: Value) -> String {
    let r = user.post(&format!("{C}/createRoom"), body).await.ok();
    r["room_id"].as_str().expect("room_id").to_owned()
}

/// A public room created by `user`.
pub async fn public_room(user: &TestUser) -> String {
    create_room(user, json!({ "preset": "public_chat" })).await
}

/// Joins a room the user may join.
pub async fn join(user: &TestUser, room_id: &str) {
    user.post(&format!("{C}/rooms/{}/join", enc(room_id)), json!({})).await.ok();
}

/// Sends a text message; returns its event ID.
pub async fn send_text(user: &TestUser, room_id: &str, body: &str) -> String {
    let txn = format!("t{}", rand_suffix());
    let path = format!("{C}/rooms/{}/send/m.room.message/{txn}", enc(room_id));
    let r = user.put(&path, json!({ "msgtype": "m.text", "body": body })).await.ok();
    r["event_id"].as_str().expect("event_id").to_owned()
}

/// The path of a state event (without a trailing slash for the empty state key).
fn state_path(room_id: &str, kind: &str, key: &str) -> String {
    let path = format!("{C}/rooms/{}/state/{kind}", enc(room_id));
    if key.is_empty() { path } else { format!("{path}/{}", enc(key)) }
}

/// Sends a state event; returns the reply.
pub async fn put_state(user: &TestUser, room_id: &str, kind: &str, key: &str, content: Value) -> crate::harness::Reply {
    user.put(&state_path(room_id, kind, key), content).await
}

/// The content of a current state event.
pub async fn state(user: &TestUser, room_id: &str, kind: &str, key: &str) -> Value {
    user.get(&state_path(room_id, kind, key)).await.ok()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::SeqCst)
}

/// A second handle on a test server's database, for checking what was stored.
pub async fn database(server: &crate::harness::TestServer) -> plexus::storage::Db {
    plexus::storage::Db::connect(&server.config.database.url, 2).await.expect("database")
}
