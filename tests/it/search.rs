//! Server-side search (`POST /search`): only readable events, ordering, paging, context,
//! groupings, the indexed fields, redactions.

use serde_json::{Value, json};

use crate::harness::{TestServer, TestUser};
use crate::room_util::{C, enc, join, public_room, send_text};

async fn search(user: &TestUser, criteria: Value, next_batch: Option<&str>) -> Value {
    let path = match next_batch {
        Some(b) => format!("{C}/search?next_batch={b}"),
        None => format!("{C}/search"),
    };
    user.post(&path, json!({ "search_categories": { "room_events": criteria } })).await.ok()["search_categories"]
        ["room_events"]
        .clone()
}

fn bodies(found: &Value) -> Vec<String> {
    found["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["result"]["content"]["body"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[tokio::test]
async fn search_finds_only_readable_events() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let shared = public_room(&alice).await;
    join(&bob, &shared).await;
    send_text(&alice, &shared, "the quick brown fox").await;
    let own = public_room(&bob).await;
    send_text(&bob, &own, "a fox in my room").await;
    let elsewhere = public_room(&carol).await;
    send_text(&carol, &elsewhere, "a secret fox").await;
    // History visibility "joined": what came before bob joined stays hidden.
    let guarded = alice
        .create_room(json!({ "preset": "public_chat", "initial_state": [
            { "type": "m.room.history_visibility", "state_key": "", "content": { "history_visibility": "joined" } }
        ] }))
        .await;
    send_text(&alice, &guarded, "fox before you came").await;
    join(&bob, &guarded).await;
    send_text(&alice, &guarded, "fox after you came").await;

    let found = search(&bob, json!({ "search_term": "FOX", "order_by": "recent" }), None).await;
    assert_eq!(bodies(&found), ["fox after you came", "a fox in my room", "the quick brown fox"]);
    assert_eq!(found["count"], json!(3));
    assert_eq!(found["highlights"], json!(["fox"]));
    // Every word must match; words are stemmed.
    let found = search(&bob, json!({ "search_term": "quick foxes" }), None).await;
    assert_eq!(bodies(&found), ["the quick brown fox"]);
    let found = search(&bob, json!({ "search_term": "secret" }), None).await;
    assert_eq!(found["count"], json!(0));
    // Carol, not in the shared room, never sees its messages.
    let found = search(&carol, json!({ "search_term": "fox" }), None).await;
    assert_eq!(bodies(&found), ["a secret fox"]);
    // Leaving a room takes it out of the search.
    bob.post(&format!("{C}/rooms/{}/leave", enc(&own)), json!({})).await.ok();
    let found = search(&bob, json!({ "search_term": "fox" }), None).await;
    assert_eq!(found["count"], json!(2));
}

#[tokio::test]
async fn search_pages_groups_and_context() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    alice
        .put(&format!("{C}/profile/{}/displayname", enc(&alice.user_id)), json!({ "displayname": "Alice" }))
        .await
        .ok();
    let room =
        alice.create_room(json!({ "preset": "public_chat", "name": "Gardening club", "topic": "tomatoes" })).await;
    join(&bob, &room).await;
    send_text(&alice, &room, "before").await;
    let hit = send_text(&alice, &room, "tomato one").await;
    send_text(&bob, &room, "after").await;
    send_text(&bob, &room, "tomato two").await;
    let other = public_room(&bob).await;
    send_text(&bob, &other, "tomato three").await;

    // Paging one result at a time, newest first.
    let criteria = json!({ "search_term": "tomato", "order_by": "recent", "keys": ["content.body"],
                           "filter": { "limit": 1 }, "groupings": { "group_by": [{ "key": "room_id" }, { "key": "sender" }] } });
    let mut seen = Vec::new();
    let mut next: Option<String> = None;
    loop {
        let page = search(&bob, criteria.clone(), next.as_deref()).await;
        assert_eq!(page["count"], json!(3));
        seen.extend(bodies(&page));
        let event_room = page["results"][0]["result"]["room_id"].as_str().unwrap().to_owned();
        assert_eq!(page["groups"]["room_id"][&event_room]["order"], json!(0), "{page}");
        match page["next_batch"].as_str() {
            Some(b) => next = Some(b.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ["tomato three", "tomato two", "tomato one"]);

    // Names and topics are searchable under their keys.
    let found = search(&bob, json!({ "search_term": "gardening", "keys": ["content.name"] }), None).await;
    assert_eq!(found["results"][0]["result"]["type"], json!("m.room.name"));
    let found = search(&bob, json!({ "search_term": "tomatoes", "keys": ["content.topic"] }), None).await;
    assert_eq!(found["count"], json!(1));
    let found = search(
        &bob,
        json!({ "search_term": "tomatoes", "keys": ["content.topic"], "filter": { "rooms": [other] } }),
        None,
    )
    .await;
    assert_eq!(found["count"], json!(0));

    // Context: the events around the result and the senders' profiles.
    let criteria = json!({ "search_term": "one", "event_context": { "before_limit": 1, "after_limit": 1, "include_profile": true } });
    let found = search(&bob, criteria, None).await;
    let result = &found["results"][0];
    assert_eq!(result["result"]["event_id"], json!(hit));
    assert_eq!(result["context"]["events_before"][0]["content"]["body"], json!("before"));
    assert_eq!(result["context"]["events_after"][0]["content"]["body"], json!("after"));
    assert_eq!(result["context"]["profile_info"][&alice.user_id]["displayname"], json!("Alice"));
    assert!(result["context"]["start"].is_string() && result["context"]["end"].is_string());

    // A redacted message is no longer found.
    alice.put(&format!("{C}/rooms/{}/redact/{}/r1", enc(&room), enc(&hit)), json!({})).await.ok();
    let found = search(&bob, json!({ "search_term": "one" }), None).await;
    assert_eq!(found["count"], json!(0));

    bob.post(
        &format!("{C}/search"),
        json!({ "search_categories": { "room_events": { "search_term": "x", "order_by": "size" } } }),
    )
    .await
    .assert_error(400, "M_INVALID_PARAM");
    bob.post(&format!("{C}/search"), json!({})).await.assert_error(400, "M_BAD_JSON");
}
