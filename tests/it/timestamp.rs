//! /timestamp_to_event.

use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::{create_room, enc, send_text};

#[tokio::test]
async fn closest_event_in_each_direction() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = create_room(&alice, json!({ "preset": "private_chat" })).await;
    let first = send_text(&alice, &room, "first").await;
    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    let second = send_text(&alice, &room, "second").await;
    let ts_of = |id: String| {
        let alice = alice.clone();
        let room = room.clone();
        async move {
            let e = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&id))).await.ok();
            e["origin_server_ts"].as_i64().unwrap()
        }
    };
    let (t1, t2) = (ts_of(first.clone()).await, ts_of(second.clone()).await);
    assert!(t1 < t2);
    let path =
        |ts: i64, dir: &str| format!("/_matrix/client/v1/rooms/{}/timestamp_to_event?ts={ts}&dir={dir}", enc(&room));

    assert_eq!(alice.get(&path(t1 + 1, "f")).await.ok(), json!({ "event_id": second, "origin_server_ts": t2 }));
    assert_eq!(alice.get(&path(t2 - 1, "b")).await.ok(), json!({ "event_id": first, "origin_server_ts": t1 }));
    assert_eq!(alice.get(&path(t2, "b")).await.ok()["event_id"], json!(second));
    alice.get(&path(t2 + 60_000, "f")).await.assert_error(404, "M_NOT_FOUND");
    alice.get(&path(0, "b")).await.assert_error(404, "M_NOT_FOUND");

    alice.get(&path(t1, "x")).await.assert_error(400, "M_INVALID_PARAM");
    let base = format!("/_matrix/client/v1/rooms/{}/timestamp_to_event", enc(&room));
    alice.get(&format!("{base}?dir=f")).await.assert_error(400, "M_MISSING_PARAM");
    alice.get(&format!("{base}?ts=1")).await.assert_error(400, "M_MISSING_PARAM");
    alice.get(&format!("{base}?ts=soon&dir=f")).await.assert_error(400, "M_INVALID_PARAM");
    bob.get(&path(t1, "f")).await.assert_error(403, "M_FORBIDDEN");
    let unknown = format!(
        "/_matrix/client/v1/rooms/{}/timestamp_to_event?ts=1&dir=f",
        enc(&format!("!x:{}", server.server_name))
    );
    alice.get(&unknown).await.assert_error(404, "M_NOT_FOUND");
}
