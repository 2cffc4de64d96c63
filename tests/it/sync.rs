//! /sync v2: initial and incremental, gappy timelines, lazy loading, membership
//! transitions and long-poll wake-ups.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{TestServer, enc};

fn timeline_ids(body: &Value, section: &str, room: &str) -> Vec<String> {
    body["rooms"][section][room]["timeline"]["events"]
        .as_array()
        .map(|a| a.iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn gappy_sync_is_limited_and_prev_batch_paginates_the_gap() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room = alice.create_room(json!({})).await;
    let filter = enc(r#"{"room":{"timeline":{"limit":5}}}"#);
    let since = alice.sync(&format!("timeout=0&filter={filter}")).await["next_batch"].as_str().unwrap().to_owned();
    let mut sent = Vec::new();
    for i in 0..12 {
        sent.push(alice.send_text(&room, &format!("m{i}")).await);
    }
    let body = alice.sync(&format!("timeout=0&filter={filter}&since={since}")).await;
    let timeline = &body["rooms"]["join"][&room]["timeline"];
    assert_eq!(timeline["limited"], true);
    assert_eq!(timeline_ids(&body, "join", &room), sent[7..]);
    let prev = timeline["prev_batch"].as_str().unwrap();
    let page = alice
        .get(&format!("/_matrix/client/v3/rooms/{}/messages?dir=b&from={prev}&to={since}&limit=50", enc(&room)))
        .await
        .ok();
    let missed: Vec<String> =
        page["chunk"].as_array().unwrap().iter().map(|e| e["event_id"].as_str().unwrap().to_owned()).collect();
    let mut expected = sent[..7].to_vec();
    expected.reverse();
    assert_eq!(missed, expected);
    // Nothing new: the room is absent.
    let next = body["next_batch"].as_str().unwrap();
    let body = alice.sync(&format!("timeout=0&since={next}")).await;
    assert!(body["rooms"]["join"].get(&room).is_none(), "{body}");
}

#[tokio::test]
async fn lazy_loading_sends_each_member_event_once() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let carol = server.register("carol").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    carol.join(&room).await.ok();
    bob.send_text(&room, "hi").await;
    let filter = enc(r#"{"room":{"state":{"lazy_load_members":true},"timeline":{"limit":1}}}"#);
    let body = alice.sync(&format!("timeout=0&filter={filter}")).await;
    let members = |body: &Value| -> Vec<String> {
        body["rooms"]["join"][&room]["state"]["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "m.room.member")
            .map(|e| e["state_key"].as_str().unwrap().to_owned())
            .collect()
    };
    let first = members(&body);
    assert!(first.contains(&bob.user_id) && !first.contains(&carol.user_id), "{first:?}");
    assert_eq!(body["rooms"]["join"][&room]["summary"]["m.joined_member_count"], 3);
    let since = body["next_batch"].as_str().unwrap().to_owned();
    bob.send_text(&room, "again").await;
    let body = alice.sync(&format!("timeout=0&filter={filter}&since={since}")).await;
    assert!(!members(&body).contains(&bob.user_id), "bob's member event sent twice: {body}");
}

#[tokio::test]
async fn invite_join_leave_rejoin_move_between_sections() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "name": "club" })).await;
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": bob.user_id }))
        .await
        .ok();
    let body = bob.sync(&format!("timeout=5000&since={since}")).await;
    let invite = body["rooms"]["invite"][&room]["invite_state"]["events"].as_array().unwrap().clone();
    assert!(invite.iter().any(|e| e["type"] == "m.room.name" && e["content"]["name"] == "club"));
    assert!(invite.iter().any(|e| e["type"] == "m.room.member" && e["content"]["membership"] == "invite"));
    let since = body["next_batch"].as_str().unwrap().to_owned();
    bob.join(&room).await.ok();
    let body = bob.sync(&format!("timeout=5000&since={since}")).await;
    assert!(body["rooms"]["join"].get(&room).is_some() && body["rooms"]["invite"].get(&room).is_none(), "{body}");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    bob.post(&format!("/_matrix/client/v3/rooms/{}/leave", enc(&room)), json!({})).await.ok();
    let body = bob.sync(&format!("timeout=5000&since={since}")).await;
    let left = &body["rooms"]["leave"][&room]["timeline"]["events"];
    assert_eq!(left.as_array().unwrap().last().unwrap()["content"]["membership"], "leave");
    let since = body["next_batch"].as_str().unwrap().to_owned();
    alice
        .post(&format!("/_matrix/client/v3/rooms/{}/invite", enc(&room)), json!({ "user_id": bob.user_id }))
        .await
        .ok();
    bob.join(&room).await.ok();
    let body = bob.sync(&format!("timeout=0&since={since}")).await;
    assert!(body["rooms"]["join"].get(&room).is_some(), "{body}");
}

#[tokio::test]
async fn long_poll_wakes_within_50ms_of_a_message() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let room = alice.create_room(json!({ "preset": "public_chat" })).await;
    bob.join(&room).await.ok();
    let since = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let waiter = {
        let bob = bob.clone();
        tokio::spawn(async move {
            let body = bob.sync(&format!("timeout=20000&since={since}")).await;
            (Instant::now(), body)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let event = alice.send_text(&room, "wake up").await;
    let sent_at = Instant::now();
    let (woke_at, body) = waiter.await.unwrap();
    assert_eq!(timeline_ids(&body, "join", &room), vec![event]);
    let latency = woke_at.saturating_duration_since(sent_at);
    assert!(latency < Duration::from_millis(50), "woke after {latency:?}");
}

#[tokio::test]
async fn bad_since_token_is_refused() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    alice.get("/_matrix/client/v3/sync?since=garbage").await.assert_error(400, "M_INVALID_PARAM");
}

#[tokio::test]
async fn to_device_messages_are_redelivered_until_acknowledged() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let bob = server.register("bob").await;
    let start = bob.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    let body = json!({ "messages": { bob.user_id.clone(): { bob.device_id.clone(): { "secret": 1 } } } });
    alice.put("/_matrix/client/v3/sendToDevice/m.test/txn1", body).await.ok();
    let events = |b: &Value| b["to_device"]["events"].as_array().cloned().unwrap_or_default();
    let first = bob.sync(&format!("timeout=5000&since={start}")).await;
    assert_eq!(events(&first).len(), 1, "{first}");
    assert_eq!(events(&first)[0]["sender"], json!(alice.user_id));
    assert_eq!(events(&first)[0]["content"], json!({ "secret": 1 }));
    // The same since again: not acknowledged yet, so delivered again.
    let again = bob.sync(&format!("timeout=0&since={start}")).await;
    assert_eq!(events(&again).len(), 1);
    // Syncing from the new token acknowledges it.
    let next = first["next_batch"].as_str().unwrap();
    let after = bob.sync(&format!("timeout=0&since={next}")).await;
    assert!(events(&after).is_empty(), "{after}");
}
