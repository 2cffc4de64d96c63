//! Hostile input sizes: JSON nested far beyond any real use is refused with the spec's error
//! before it can exhaust the stack (serde_json's recursion limit of 128 in every parse of a
//! body, a query parameter or a federation request), on client and federation routes, and
//! the server stays up; nesting within the limit goes through every stage of an event.
//! Connections are limited in total and per address.

use reqwest::Method;
use serde_json::{Value, json};

use crate::harness::{TestServer, enc};

/// `[[[...]]]` nested `depth` times inside `{"body": ...}`.
fn deep_json(depth: usize) -> Vec<u8> {
    let mut s = String::with_capacity(depth * 2 + 16);
    s.push_str("{\"msgtype\":\"m.text\",\"body\":");
    s.push_str(&"[".repeat(depth));
    s.push_str(&"]".repeat(depth));
    s.push('}');
    s.into_bytes()
}

/// The same nesting as a `serde_json::Value`, built without recursion.
fn nested_value(depth: usize) -> Value {
    let mut v = json!("bottom");
    for _ in 0..depth {
        v = json!({ "n": v });
    }
    v
}

async fn assert_alive(server: &TestServer) {
    server.get("/_matrix/client/versions").await.ok();
}

#[tokio::test]
async fn deeply_nested_json_is_refused_without_crashing() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    let deep = deep_json(10_000);

    let send = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/deep1", enc(&room_id));
    server.request_raw(Method::PUT, &send, Some(&alice.token), deep.clone()).await.assert_error(400, "M_NOT_JSON");
    let create = "/_matrix/client/v3/createRoom";
    server.request_raw(Method::POST, create, Some(&alice.token), deep.clone()).await.assert_error(400, "M_NOT_JSON");
    let register = "/_matrix/client/v3/register";
    server.request_raw(Method::POST, register, None, deep.clone()).await.assert_error(400, "M_NOT_JSON");
    assert_alive(&server).await;

    // A sync filter given inline in the query string.
    let filter = format!("{}{}", "{\"room\":".repeat(1_000), "{}");
    let r = alice.get(&format!("/_matrix/client/v3/sync?timeout=0&filter={}", enc(&filter))).await;
    assert_eq!(r.status, 400, "{r:?}");
    assert!(["M_NOT_JSON", "M_BAD_JSON", "M_INVALID_PARAM"].contains(&r.errcode()), "{r:?}");
    assert_alive(&server).await;

    // Federation: the body is parsed for the signature check before anything else.
    let auth = format!(
        "X-Matrix origin=\"other.example\",destination=\"{}\",key=\"ed25519:a\",sig=\"AAAA\"",
        server.server_name
    );
    for (method, path) in
        [(Method::POST, "/_matrix/federation/v1/user/keys/query"), (Method::PUT, "/_matrix/federation/v1/send/deep1")]
    {
        let reply = server
            .client
            .request(method, format!("{}{path}", server.base))
            .header("Authorization", &auth)
            .header("Content-Type", "application/json")
            .body(deep.clone())
            .send()
            .await
            .unwrap();
        let status = reply.status().as_u16();
        assert!((400..500).contains(&status), "{path}: {status}");
        assert_alive(&server).await;
    }
}

#[tokio::test]
async fn nesting_within_the_limit_goes_through_every_stage() {
    let server = TestServer::start().await;
    let alice = server.register("alice").await;
    let room_id = alice.create_room(json!({})).await;
    // 100 objects deep: within serde_json's limit of 128 levels also where the event sits
    // inside a /sync answer (which adds 9 levels) read by a client using serde_json.
    let content = json!({ "msgtype": "m.text", "body": "deep", "x": nested_value(100) });
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/ok1", enc(&room_id));
    let event_id = alice.put(&path, content.clone()).await.ok()["event_id"].as_str().unwrap().to_owned();
    let event = alice.get(&format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room_id), enc(&event_id))).await.ok();
    assert_eq!(event["content"], content);
    let sync = alice.sync("timeout=0").await;
    let timeline = &sync["rooms"]["join"][&room_id]["timeline"]["events"];
    assert!(timeline.as_array().unwrap().iter().any(|e| e["event_id"] == event_id.as_str()));
    // Beyond the limit the same content is refused, not stored.
    let too_deep = json!({ "msgtype": "m.text", "body": "deep", "x": nested_value(200) });
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/deep2", enc(&room_id));
    alice.put(&path, too_deep).await.assert_error(400, "M_NOT_JSON");
}

/// A raw HTTP/1.1 connection from a given loopback address, which stays open.
async fn connect_from(ip: &str, server: &TestServer) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(format!("{ip}:0").parse().unwrap()).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// Sends `GET /_matrix/client/versions` on a connection and reads the answer's status line
/// (None: the server closed the connection without answering).
async fn versions(stream: &mut tokio::net::TcpStream) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let request = "GET /_matrix/client/versions HTTP/1.1\r\nHost: test\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return None;
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    // The whole answer: headers and the JSON body (which ends with '}').
    while !answer.ends_with(b"}") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    text.lines().next().filter(|l| !l.is_empty()).map(str::to_owned)
}

#[tokio::test]
async fn connections_are_limited_per_address_and_in_total() {
    let server = TestServer::start_with(|c| {
        c.limits.max_connections = 3;
        c.limits.max_connections_per_ip = 2;
    })
    .await;
    let ok = Some("HTTP/1.1 200 OK".to_owned());
    // Two kept-alive connections from 127.0.0.1: its maximum.
    let mut first = connect_from("127.0.0.1", &server).await;
    assert_eq!(versions(&mut first).await, ok);
    let mut second = connect_from("127.0.0.1", &server).await;
    assert_eq!(versions(&mut second).await, ok);
    // A third from the same address is closed unanswered.
    let mut third = connect_from("127.0.0.1", &server).await;
    assert_eq!(versions(&mut third).await, None);
    // Another address gets the last of the three places.
    let mut other = connect_from("127.0.0.2", &server).await;
    assert_eq!(versions(&mut other).await, ok);
    // With three open, a fourth waits until one closes, then is answered.
    let mut waiting = connect_from("127.0.0.3", &server).await;
    let answered = tokio::spawn(async move { versions(&mut waiting).await });
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!answered.is_finished(), "answered beyond the connection limit");
    drop(first);
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), answered).await;
    assert_eq!(answer.expect("answered once a connection closed").unwrap(), ok);
    drop((second, other));
}
