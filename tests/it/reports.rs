//! Reporting events, rooms and users.

use serde_json::json;

use crate::harness::TestServer;
use crate::room_util::{C, database, enc, join, public_room, send_text};

/// (event_id, reporter, reason, score) of a stored report.
type ReportRow = (Option<String>, String, Option<String>, Option<i64>);

#[tokio::test]
async fn reports_are_stored() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = public_room(&alice).await;
    let event = send_text(&alice, &room, "rude").await;
    let event_path = format!("{C}/rooms/{}/report/{}", enc(&room), enc(&event));

    // Only a joined member who can see the event reports it; others get 404.
    bob.post(&event_path, json!({ "reason": "rude" })).await.assert_error(404, "M_NOT_FOUND");
    join(&bob, &room).await;
    bob.post(&event_path, json!({ "reason": "rude", "score": -100 })).await.ok();
    bob.post(&event_path, json!({})).await.ok();
    bob.post(&format!("{C}/rooms/{}/report/{}", enc(&room), enc("$missing")), json!({}))
        .await
        .assert_error(404, "M_NOT_FOUND");
    bob.post(&event_path, json!({ "score": "high" })).await.assert_error(400, "M_BAD_JSON");

    // Rooms: any user, the room must exist, a reason is required.
    let carol = server.register("carol").await;
    carol.post(&format!("{C}/rooms/{}/report", enc(&room)), json!({ "reason": "spam room" })).await.ok();
    carol.post(&format!("{C}/rooms/{}/report", enc(&room)), json!({})).await.assert_error(400, "M_BAD_JSON");
    let unknown = format!("{C}/rooms/{}/report", enc(&format!("!nope:{}", server.server_name)));
    carol.post(&unknown, json!({ "reason": "x" })).await.assert_error(404, "M_NOT_FOUND");

    // Users: local users must exist; remote ones are taken as given.
    carol.post(&format!("{C}/users/{}/report", enc(&alice.user_id)), json!({ "reason": "troll" })).await.ok();
    let ghost = format!("@ghost:{}", server.server_name);
    carol
        .post(&format!("{C}/users/{}/report", enc(&ghost)), json!({ "reason": "x" }))
        .await
        .assert_error(404, "M_NOT_FOUND");
    carol.post(&format!("{C}/users/{}/report", enc("@far:elsewhere.org")), json!({ "reason": "x" })).await.ok();
    carol
        .post(&format!("{C}/users/{}/report", enc("nobody")), json!({ "reason": "x" }))
        .await
        .assert_error(400, "M_INVALID_PARAM");

    let db = database(&server).await;
    let events: Vec<ReportRow> =
        sqlx::query_as("SELECT event_id, reporter, reason, score FROM event_reports ORDER BY id")
            .fetch_all(db.read())
            .await
            .unwrap();
    assert_eq!(
        events,
        vec![
            (Some(event.clone()), bob.user_id.clone(), Some("rude".into()), Some(-100)),
            (Some(event.clone()), bob.user_id.clone(), None, None),
            (None, carol.user_id.clone(), Some("spam room".into()), None),
        ]
    );
    let users: Vec<(String, String)> = sqlx::query_as("SELECT target_user_id, reason FROM user_reports ORDER BY id")
        .fetch_all(db.read())
        .await
        .unwrap();
    assert_eq!(users, vec![(alice.user_id.clone(), "troll".into()), ("@far:elsewhere.org".into(), "x".into())]);
}
