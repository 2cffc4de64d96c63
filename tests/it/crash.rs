//! Crash safety of the real `plexus` binary: a few clients send messages and topic changes,
//! the server is SIGKILLed at a random moment, restarted on the same database, and then
//! every event that got a 200 is there, with its content, in each client's order; retried
//! transactions are not duplicated; the room's state is the last topic in the timeline; and
//! no sync token goes backwards. SQLite, or PostgreSQL with PLEXUS_TEST_DATABASE_URL.
//!
//! The same for the federation queue: what a server acknowledged stays queued for a
//! destination that is down, across kills, and arrives when it is back.
//!
//! `PLEXUS_CRASH_KILLS` sets how many kills each test makes (default 5; 50 for the full proof).

use std::collections::{BTreeMap, HashMap};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use serde_json::{Value, json};

use crate::harness::{Process, ProcessClient as Client, enc, fed_server, fresh_database, name_of, wait_for};

struct Setup {
    dir: tempfile::TempDir,
    /// Server name and listening address: a loopback address and port.
    address: String,
    database: String,
}

impl Setup {
    /// A fresh database and a free port on a loopback address.
    async fn new(ip: &str) -> Setup {
        let dir = tempfile::tempdir().unwrap();
        let database = fresh_database(dir.path()).await;
        let address = std::net::TcpListener::bind(format!("{ip}:0")).unwrap().local_addr().unwrap().to_string();
        Setup { dir, address, database }
    }

    fn base(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Starts `plexus serve` the way the acceptance harness does (plus plain-HTTP federation
    /// with other test servers, which only a config file can turn on) and waits until it
    /// answers.
    async fn start(&self) -> Process {
        let config = self.dir.path().join("plexus.toml");
        let toml = format!("server_name = \"{}\"\n[federation]\ninsecure_plain_http = true\n", self.address);
        std::fs::write(&config, toml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .env_clear()
            .current_dir(self.dir.path())
            .env("PLEXUS_SERVER_NAME", &self.address)
            .env("PLEXUS_LISTEN", &self.address)
            .env("PLEXUS_DATABASE_URL", &self.database)
            .env("PLEXUS_DATA_DIR", self.dir.path())
            .env("PLEXUS_REGISTRATION", "open")
            .env("PLEXUS_RATE_LIMITS", "off")
            .env("PLEXUS_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("plexus starts");
        let mut process = Process(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let url = format!("{}/_matrix/client/versions", self.base());
        loop {
            if let Ok(resp) = reqwest::get(&url).await
                && resp.status() == 200
            {
                return process;
            }
            if let Some(status) = process.0.try_wait().unwrap() {
                panic!("plexus serve exited with {status}");
            }
            assert!(Instant::now() < deadline, "plexus serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

async fn register(http: &reqwest::Client, base: &str, name: &str) -> Client {
    Client::register(http, base, name).await
}

/// An event a client sent and got a 200 for.
#[derive(Debug, Clone)]
struct Acked {
    client: usize,
    seq: u64,
    event_id: String,
}

/// What a client was sending when the server died: retried after the restart.
struct InFlight {
    client: usize,
    txn: String,
    seq: u64,
    topic: bool,
}

fn stream_of(token: &str) -> i64 {
    token.strip_prefix('s').and_then(|t| t.split('_').next()).and_then(|s| s.parse().ok()).expect("sync token")
}

fn body_of(client: usize, seq: u64) -> String {
    format!("client {client} message {seq}")
}

fn topic_of(client: usize, seq: u64) -> String {
    format!("client {client} topic {seq}")
}

/// Sends until the server dies. Every fifth event of client 0 (the room creator) is a topic change.
async fn send_load(
    client: Client,
    index: usize,
    room: String,
    first_seq: u64,
    acked: Arc<Mutex<Vec<Acked>>>,
) -> InFlight {
    let mut seq = first_seq;
    loop {
        let topic = index == 0 && seq.is_multiple_of(5);
        let txn = format!("t{seq}");
        let (path, body) = if topic {
            (
                format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room)),
                json!({ "topic": topic_of(index, seq) }),
            )
        } else {
            (
                format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(&room)),
                json!({ "msgtype": "m.text", "body": body_of(index, seq) }),
            )
        };
        match client.call(reqwest::Method::PUT, &path, Some(body)).await {
            Ok((200, body)) => {
                let event_id = body["event_id"].as_str().expect("event_id").to_owned();
                acked.lock().unwrap().push(Acked { client: index, seq, event_id });
            }
            Ok((status, body)) => panic!("send answered {status}: {body}"),
            Err(_) => return InFlight { client: index, txn, seq, topic },
        }
        seq += 1;
    }
}

/// The room's whole timeline, oldest first.
async fn timeline(client: &Client, room: &str) -> Vec<Value> {
    let mut events = Vec::new();
    let mut from = String::new();
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=500{from}", enc(room));
        let page = client.ok(reqwest::Method::GET, &path, None).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        if chunk.is_empty() {
            return events;
        }
        events.extend(chunk);
        match page["end"].as_str() {
            Some(end) => from = format!("&from={end}"),
            None => return events,
        }
    }
}

/// Checks everything acknowledged survived, in order, exactly once, with the room state
/// matching the timeline.
async fn verify(client: &Client, room: &str, acked: &[Acked], last_topic: Option<&Acked>) {
    let events = timeline(client, room).await;
    let position: HashMap<&str, usize> =
        events.iter().enumerate().map(|(i, e)| (e["event_id"].as_str().unwrap(), i)).collect();
    let mut last_of_client: BTreeMap<usize, usize> = BTreeMap::new();
    for a in acked {
        let Some(&at) = position.get(a.event_id.as_str()) else {
            panic!("acknowledged event {} (client {} #{}) is lost", a.event_id, a.client, a.seq)
        };
        let content = &events[at]["content"];
        assert!(
            content["body"] == body_of(a.client, a.seq) || content["topic"] == topic_of(a.client, a.seq),
            "event {} has the wrong content: {content}",
            a.event_id
        );
        if let Some(before) = last_of_client.insert(a.client, at) {
            assert!(before < at, "client {}'s events are out of order", a.client);
        }
    }
    let mut seen = std::collections::HashSet::new();
    for e in &events {
        let c = &e["content"];
        let key = c["body"].as_str().or(c["topic"].as_str()).map(str::to_owned);
        if let Some(key) = key {
            assert!(seen.insert(key.clone()), "{key:?} is in the timeline twice");
        }
    }
    // The current topic is the last one in the timeline, at least as new as the last acknowledged.
    let newest_topic = events.iter().rev().find(|e| e["type"] == "m.room.topic").map(|e| e["content"]["topic"].clone());
    let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(room));
    let (status, current) = client.call(reqwest::Method::GET, &path, None).await.unwrap();
    match newest_topic {
        Some(t) => assert_eq!((status, &current["topic"]), (200, &t)),
        None => assert_eq!(status, 404),
    }
    if let Some(last) = last_topic {
        let at = position[last.event_id.as_str()];
        assert!(events[at..].iter().any(|e| e["type"] == "m.room.topic" && e["content"]["topic"] == current["topic"]));
    }
}

/// How many kills a test makes: `PLEXUS_CRASH_KILLS`, default 5.
fn kills() -> usize {
    std::env::var("PLEXUS_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(5)
}

#[tokio::test]
async fn acknowledged_events_survive_sigkill() {
    let kills = kills();
    let setup = Setup::new("127.0.0.1").await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut process = setup.start().await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol"] {
        clients.push(register(&http, &setup.base(), name).await);
    }
    let room = clients[0]
        .ok(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "preset": "public_chat" })))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for c in &clients[1..] {
        c.ok(reqwest::Method::POST, &format!("/_matrix/client/v3/join/{}", enc(&room)), Some(json!({}))).await;
    }

    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut next_seq = vec![0u64; clients.len()];
    let mut newest_token = 0i64;
    let mut rng = rand::thread_rng();
    for round in 0..kills {
        let tasks: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(i, c)| tokio::spawn(send_load(c.clone(), i, room.clone(), next_seq[i], acked.clone())))
            .collect();
        // A sync token handed out under load, just before the kill.
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..400))).await;
        let sync = clients[1].ok(reqwest::Method::GET, "/_matrix/client/v3/sync?timeout=0", None).await;
        let token = sync["next_batch"].as_str().unwrap().to_owned();
        assert!(stream_of(&token) >= newest_token, "sync token went backwards: {token} < s{newest_token}");
        newest_token = stream_of(&token);
        tokio::time::sleep(Duration::from_millis(rng.gen_range(0..200))).await;
        process.0.kill().unwrap(); // SIGKILL
        process.0.wait().unwrap();
        let mut in_flight = Vec::new();
        for task in tasks {
            in_flight.push(task.await.unwrap());
        }
        process = setup.start().await;

        // Retrying what was in flight is idempotent: the same event if it was committed.
        for f in &in_flight {
            let c = &clients[f.client];
            let (path, body) = if f.topic {
                let path = format!("/_matrix/client/v3/rooms/{}/state/m.room.topic/", enc(&room));
                (path, json!({ "topic": topic_of(f.client, f.seq) }))
            } else {
                let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(&room), f.txn);
                (path, json!({ "msgtype": "m.text", "body": body_of(f.client, f.seq) }))
            };
            if f.topic {
                // A state event has no transaction ID: only resend it if it was lost.
                let events = timeline(c, &room).await;
                if events.iter().any(|e| e["content"]["topic"] == topic_of(f.client, f.seq)) {
                    next_seq[f.client] = f.seq + 1;
                    continue;
                }
            }
            let event_id = c.ok(reqwest::Method::PUT, &path, Some(body)).await["event_id"].as_str().unwrap().to_owned();
            acked.lock().unwrap().push(Acked { client: f.client, seq: f.seq, event_id });
            next_seq[f.client] = f.seq + 1;
        }
        let acked_now = acked.lock().unwrap().clone();
        let last_topic = acked_now.iter().rev().find(|a| a.client == 0 && a.seq % 5 == 0).cloned();
        verify(&clients[1], &room, &acked_now, last_topic.as_ref()).await;

        // No sync token goes backwards across the restart, and an old one still works.
        let since = format!("/_matrix/client/v3/sync?timeout=0&since=s{newest_token}_0");
        let sync = clients[1].ok(reqwest::Method::GET, &since, None).await;
        let token = sync["next_batch"].as_str().unwrap();
        assert!(
            stream_of(token) >= newest_token,
            "round {round}: sync token went backwards: {token} < s{newest_token}"
        );
        let fresh = clients[2].ok(reqwest::Method::GET, "/_matrix/client/v3/sync?timeout=0", None).await;
        assert!(stream_of(fresh["next_batch"].as_str().unwrap()) >= newest_token);
        newest_token = stream_of(token);
    }
    let total = acked.lock().unwrap().len();
    assert!(total > kills, "the load sent too little to prove anything ({total} events)");
    eprintln!("{kills} kills, {total} acknowledged events all present, in order, after each restart");
    drop(process);
}

/// SIGTERM with a sync long-poll open: the server answers it and exits within about a
/// second (the long-poll no longer holds the graceful shutdown for its timeout), and what it
/// acknowledged is there after a restart.
#[tokio::test]
async fn sigterm_stops_promptly_without_losing_acknowledged_events() {
    let setup = Setup::new("127.0.0.1").await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
    let mut process = setup.start().await;
    let alice = register(&http, &setup.base(), "alice").await;
    let room = alice.ok(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(json!({}))).await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/t1", enc(&room));
    let sent = alice.ok(reqwest::Method::PUT, &path, Some(json!({ "msgtype": "m.text", "body": "kept" }))).await;
    let since = alice.ok(reqwest::Method::GET, "/_matrix/client/v3/sync", None).await["next_batch"]
        .as_str()
        .unwrap()
        .to_owned();
    let poller = alice.clone();
    let long_poll = tokio::spawn(async move {
        poller.call(reqwest::Method::GET, &format!("/_matrix/client/v3/sync?timeout=50000&since={since}"), None).await
    });
    // The long-poll reaches the server and waits (nothing new is coming).
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!long_poll.is_finished());

    let asked = Instant::now();
    let pid = libc::pid_t::try_from(process.0.id()).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(asked.elapsed() < Duration::from_secs(5), "still running 5 s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let took = asked.elapsed();
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_millis(1500), "stopped in {took:?}");
    let (code, _) = long_poll.await.unwrap().expect("the long-poll was answered");
    assert_eq!(code, 200);

    let _process = setup.start().await;
    let event = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(sent["event_id"].as_str().unwrap()));
    assert_eq!(alice.ok(reqwest::Method::GET, &event, None).await["content"]["body"], "kept");
}

/// The federation queue across SIGKILLs: a real `plexus` process (A) shares a room with a
/// user of another server (B, in-process); B goes down; A's user keeps sending while A is
/// SIGKILLed at random moments and restarted. Every event A acknowledged is still queued for
/// B after the last kill, and all of them reach B once it is back.
#[tokio::test]
async fn events_queued_for_federation_survive_sigkill() {
    let kills = kills();
    let b = fed_server("127.0.0.2").await;
    let b_name = name_of(&b);
    let bob = b.register("bob").await;
    let setup = Setup::new("127.0.0.3").await;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut process = setup.start().await;
    let alice = register(&http, &setup.base(), "alice").await;
    let room = alice
        .ok(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(json!({ "preset": "public_chat" })))
        .await["room_id"]
        .as_str()
        .unwrap()
        .to_owned();
    bob.post(&format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(&setup.address)), json!({}))
        .await
        .ok();
    let b = b.stop_keeping_data().await;

    // Client 1 of `send_load`: messages only.
    const SENDER: usize = 1;
    let acked: Arc<Mutex<Vec<Acked>>> = Arc::default();
    let mut next_seq = 0;
    let mut rng = rand::thread_rng();
    for _ in 0..kills {
        let task = tokio::spawn(send_load(alice.clone(), SENDER, room.clone(), next_seq, acked.clone()));
        tokio::time::sleep(Duration::from_millis(rng.gen_range(20..400))).await;
        process.0.kill().unwrap(); // SIGKILL
        process.0.wait().unwrap();
        let in_flight = task.await.unwrap();
        process = setup.start().await;
        // The retry returns the event if it was committed before the kill.
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{}", enc(&room), in_flight.txn);
        let body = json!({ "msgtype": "m.text", "body": body_of(SENDER, in_flight.seq) });
        let event_id = alice.ok(reqwest::Method::PUT, &path, Some(body)).await["event_id"].as_str().unwrap().to_owned();
        acked.lock().unwrap().push(Acked { client: SENDER, seq: in_flight.seq, event_id });
        next_seq = in_flight.seq + 1;
    }
    let acked = acked.lock().unwrap().clone();
    assert!(acked.len() > kills, "the load sent too little to prove anything ({} events)", acked.len());

    // B has been down all along: every acknowledged event waits in A's queue for B.
    let db = plexus::storage::Db::connect(&setup.database, 1).await.unwrap();
    let queued: std::collections::HashSet<String> =
        plexus::storage::federation::next_batch(&db, b_name.as_str(), i64::MAX, 0)
            .await
            .unwrap()
            .into_iter()
            .filter_map(|item| item.event_id)
            .collect();
    let lost: Vec<_> = acked.iter().filter(|a| !queued.contains(&a.event_id)).collect();
    assert!(lost.is_empty(), "acknowledged but not queued for {b_name}: {lost:?}");

    // B is back and says so (a message from bob reaches A, which then retries at once).
    let b = b.start().await;
    bob.send_text(&room, "back").await;
    for a in &acked {
        let path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&a.event_id));
        wait_for(&format!("{} on {b_name}", a.event_id), async || bob.get(&path).await.status == 200).await;
    }
    eprintln!("{kills} kills, {} acknowledged events all queued for and delivered to {b_name}", acked.len());
    drop((process, b));
}
