//! Receipts and read markers, and the receipt queries /sync uses.

use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::{C, database, enc, join, public_room, send_text};

#[tokio::test]
async fn receipts_and_read_markers() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice).await;
    join(&bob, &room).await;
    let first = send_text(&alice, &room, "one").await;
    let second = send_text(&alice, &room, "two").await;
    let elsewhere = send_text(&alice, &public_room(&alice).await, "elsewhere").await;
    let receipt = |kind: &str, event: &str| format!("{C}/rooms/{}/receipt/{kind}/{}", enc(&room), enc(event));

    let db = database(&server).await;
    let start = plexus::storage::current_stream_pos(&db).await.unwrap();
    alice.post(&receipt("m.read", &second), json!({})).await.ok();
    bob.post(&receipt("m.read", &first), json!({ "thread_id": "main" })).await.ok();
    bob.post(&receipt("m.read.private", &second), json!({})).await.ok();
    let after_bob = plexus::storage::current_stream_pos(&db).await.unwrap();
    // A receipt never moves back.
    alice.post(&receipt("m.read", &first), json!({})).await.ok();

    let latest = plexus::storage::receipts::latest(&db, &room, &alice.user_id, i64::MAX).await.unwrap();
    let alice_read = &latest[&second]["m.read"][&alice.user_id];
    assert!(alice_read["ts"].as_i64().unwrap() > 0 && alice_read.get("thread_id").is_none(), "{latest:?}");
    assert_eq!(latest[&first]["m.read"][&bob.user_id]["thread_id"], json!("main"));
    // Private receipts are seen by their owner only.
    assert!(latest[&second].get("m.read.private").is_none());
    let bobs_view = plexus::storage::receipts::latest(&db, &room, &bob.user_id, i64::MAX).await.unwrap();
    assert!(bobs_view[&second]["m.read.private"].get(&bob.user_id).is_some());
    // A range holds only the receipts changed in it.
    let later = plexus::storage::receipts::in_range(&db, &room, &alice.user_id, after_bob, i64::MAX).await.unwrap();
    assert!(later.is_empty(), "{later:?}");
    let all = plexus::storage::receipts::in_range(&db, &room, &alice.user_id, start, after_bob).await.unwrap();
    assert_eq!(all.len(), 2);

    // Bad receipts.
    alice.post(&receipt("m.unknown", &second), json!({})).await.assert_error(400, "M_INVALID_PARAM");
    alice.post(&receipt("m.read", &second), json!({ "thread_id": "" })).await.assert_error(400, "M_INVALID_PARAM");
    alice.post(&receipt("m.read", &second), json!({ "thread_id": 5 })).await.assert_error(400, "M_INVALID_PARAM");
    alice.post(&receipt("m.read", &second), json!({ "thread_id": first })).await.assert_error(400, "M_INVALID_PARAM");
    alice
        .post(&receipt("m.fully_read", &second), json!({ "thread_id": "main" }))
        .await
        .assert_error(400, "M_INVALID_PARAM");
    alice.post(&receipt("m.read", &elsewhere), json!({})).await.assert_error(404, "M_NOT_FOUND");
    alice.post(&receipt("m.read", "$unknown"), json!({})).await.assert_error(404, "M_NOT_FOUND");
    let carol = server.register("carol").await;
    carol.post(&receipt("m.read", &second), json!({})).await.assert_error(403, "M_FORBIDDEN");

    // Threaded receipts: the thread root and its replies are in the thread, not in main.
    let root = send_text(&alice, &room, "root").await;
    let path = format!("{C}/rooms/{}/send/m.room.message/reply1", enc(&room));
    let reply = bob
        .put(
            &path,
            json!({ "msgtype": "m.text", "body": "r", "m.relates_to": { "rel_type": "m.thread", "event_id": root } }),
        )
        .await
        .ok()["event_id"]
        .as_str()
        .unwrap()
        .to_owned();
    alice.post(&receipt("m.read", &reply), json!({ "thread_id": root })).await.ok();
    alice.post(&receipt("m.read", &root), json!({ "thread_id": root })).await.ok();
    alice.post(&receipt("m.read", &reply), json!({ "thread_id": "main" })).await.assert_error(400, "M_INVALID_PARAM");

    // Read markers: m.fully_read in room account data, m.read and m.read.private as receipts.
    let markers = format!("{C}/rooms/{}/read_markers", enc(&room));
    let fully_read = format!("{C}/user/{}/rooms/{}/account_data/m.fully_read", enc(&bob.user_id), enc(&room));
    bob.post(&markers, json!({ "m.fully_read": second, "m.read": second })).await.ok();
    assert_eq!(bob.get(&fully_read).await.ok(), json!({ "event_id": second }));
    bob.post(&markers, json!({ "m.fully_read": first })).await.ok();
    assert_eq!(bob.get(&fully_read).await.ok(), json!({ "event_id": second }), "the marker never moves back");
    bob.post(&receipt("m.fully_read", &reply), json!({})).await.ok();
    assert_eq!(bob.get(&fully_read).await.ok(), json!({ "event_id": reply }));
    let latest = plexus::storage::receipts::latest(&db, &room, &alice.user_id, i64::MAX).await.unwrap();
    assert!(latest[&second]["m.read"].get(&bob.user_id).is_some(), "{latest:?}");
    bob.post(&markers, json!({ "m.read": elsewhere })).await.assert_error(404, "M_NOT_FOUND");
    bob.post(&markers, json!({ "m.fully_read": 5 })).await.assert_error(400, "M_BAD_JSON");
    carol.post(&markers, json!({ "m.fully_read": second })).await.assert_error(403, "M_FORBIDDEN");
}
