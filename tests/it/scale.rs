//! Scale-out (docs/scaling.md): three `plexus serve` processes on one PostgreSQL database,
//! one shared data folder, and the test's own round-robin proxy in front (each request to
//! the next process; a process that refuses the connection is skipped, as a load balancer's
//! health check would). PostgreSQL only: skipped, with a message, without
//! PLEXUS_TEST_DATABASE_URL. The acceptance scenarios run through the proxy when
//! PLEXUS_ACCEPTANCE_DIR names the acceptance suite (its `run.sh`).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::Response;
use serde_json::{Value, json};

use crate::harness::{Process, ProcessClient as Client, enc, fed_server, fresh_database};

const PROCESSES: usize = 3;

fn postgres() -> bool {
    let set = std::env::var("PLEXUS_TEST_DATABASE_URL").is_ok_and(|v| !v.is_empty());
    if !set {
        eprintln!("scale: skipped, several processes need PostgreSQL (set PLEXUS_TEST_DATABASE_URL)");
    }
    set
}

/// The processes of one server, and the proxy whose address is the server name.
struct Cluster {
    dir: tempfile::TempDir,
    database: String,
    server_name: String,
    ports: Vec<u16>,
    processes: Vec<Option<Process>>,
    http: reqwest::Client,
    /// Environment of every process, after the defaults of `spawn`.
    env: Vec<(String, String)>,
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Cluster {
    async fn start() -> Cluster {
        Cluster::start_with("", &[]).await
    }

    /// Starts with more configuration (TOML) and environment.
    async fn start_with(config: &str, env: &[(&str, &str)]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let database = fresh_database(dir.path()).await;
        let ports: Vec<u16> = (0..PROCESSES).map(|_| free_port()).collect();
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let server_name = proxy.local_addr().unwrap().to_string();
        let backends = ports.iter().map(|p| format!("http://127.0.0.1:{p}")).collect();
        tokio::spawn(round_robin(proxy, backends));
        // Other servers in these tests are reached over plain HTTP.
        let config = format!("server_name = \"{server_name}\"\n{config}\n[federation]\ninsecure_plain_http = true\n");
        std::fs::write(dir.path().join("plexus.toml"), config).unwrap();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let mut cluster = Cluster { dir, database, server_name, ports, processes: Vec::new(), http, env };
        for i in 0..PROCESSES {
            let process = cluster.spawn(i).await;
            cluster.processes.push(Some(process));
        }
        cluster
    }

    /// Starts process `i` and waits until it answers.
    async fn spawn(&self, i: usize) -> Process {
        let log = std::fs::File::create(self.log_path(i)).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_plexus"))
            .args(["serve", "-c"])
            .arg(self.dir.path().join("plexus.toml"))
            .env_clear()
            .current_dir(self.dir.path())
            .env("PLEXUS_SERVER_NAME", &self.server_name)
            .env("PLEXUS_LISTEN", format!("127.0.0.1:{}", self.ports[i]))
            .env("PLEXUS_DATABASE_URL", &self.database)
            .env("PLEXUS_DATA_DIR", self.dir.path())
            .env("PLEXUS_REGISTRATION", "open")
            .env("PLEXUS_REGISTRATION_SHARED_SECRET", "scale-secret")
            .env("PLEXUS_RATE_LIMITS", "off")
            .env("PLEXUS_LOG", "warn,plexus::cluster=info")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("plexus starts");
        let mut process = Process(child);
        let url = format!("{}/_matrix/client/versions", self.base_of(i));
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(resp) = self.http.get(&url).send().await
                && resp.status() == 200
            {
                return process;
            }
            if let Some(status) = process.0.try_wait().unwrap() {
                panic!("plexus serve exited with {status}: {}", self.log(i));
            }
            assert!(Instant::now() < deadline, "plexus serve did not come up");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn log_path(&self, i: usize) -> std::path::PathBuf {
        self.dir.path().join(format!("process{i}.log"))
    }

    fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The proxy (what clients and other servers use).
    fn base(&self) -> String {
        format!("http://{}", self.server_name)
    }

    /// One process, directly.
    fn base_of(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.ports[i])
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut process) = self.processes[i].take() {
            process.0.kill().unwrap(); // SIGKILL
            process.0.wait().unwrap();
        }
    }

    /// The process that runs the background jobs now (it logged so last).
    async fn leader(&self) -> usize {
        for _ in 0..100 {
            let leading: Vec<usize> = (0..PROCESSES)
                .filter(|&i| self.processes[i].is_some())
                .filter(|&i| {
                    let log = self.log(i);
                    log.rfind("became the leader").is_some_and(|at| log.rfind("lost the leadership") < Some(at))
                })
                .collect();
            if let [one] = leading[..] {
                return one;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let logs: Vec<String> = (0..PROCESSES).map(|i| self.log(i)).collect();
        panic!("no single leader among the processes: {logs:#?}");
    }

    /// The first request gets a UIA session from one process, the second continues it on another.
    async fn register(&self, name: &str) -> Client {
        Client::register(&self.http, &self.base(), name).await
    }

    /// Shared-secret registration: the nonce from process 0, the registration on process 1.
    async fn register_with_secret(&self, name: &str, admin: bool) -> Client {
        let nonce_url = format!("{}/_synapse/admin/v1/register", self.base_of(0));
        let nonce: Value = self.http.get(&nonce_url).send().await.unwrap().json().await.unwrap();
        let nonce = nonce["nonce"].as_str().unwrap();
        let mac = {
            use hmac::{Hmac, Mac};
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(b"scale-secret").unwrap();
            let kind = if admin { "admin" } else { "notadmin" };
            mac.update(format!("{nonce}\0{name}\0password\0{kind}").as_bytes());
            mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect::<String>()
        };
        let body = json!({ "nonce": nonce, "username": name, "password": "password", "mac": mac, "admin": admin });
        let url = format!("{}/_synapse/admin/v1/register", self.base_of(1));
        let answer = self.http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(answer.status(), 200);
        let r: Value = answer.json().await.unwrap();
        Client {
            http: self.http.clone(),
            base: self.base(),
            token: r["access_token"].as_str().unwrap().to_owned(),
            user_id: r["user_id"].as_str().unwrap().to_owned(),
        }
    }
}

impl Client {
    /// The same user, talking to another address (one process directly).
    fn via(&self, base: String) -> Client {
        Client { base, ..self.clone() }
    }

    async fn create_room(&self) -> String {
        let body = json!({ "preset": "public_chat" });
        let room = self.ok(reqwest::Method::POST, "/_matrix/client/v3/createRoom", Some(body)).await;
        room["room_id"].as_str().unwrap().to_owned()
    }

    async fn join(&self, room: &str) {
        self.ok(reqwest::Method::POST, &format!("/_matrix/client/v3/join/{}", enc(room)), Some(json!({}))).await;
    }

    async fn send(&self, room: &str, txn: &str, text: &str) -> reqwest::Result<(u16, Value)> {
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room));
        self.call(reqwest::Method::PUT, &path, Some(json!({ "msgtype": "m.text", "body": text }))).await
    }

    async fn sync(&self, query: &str) -> Value {
        self.ok(reqwest::Method::GET, &format!("/_matrix/client/v3/sync?{query}"), None).await
    }
}

/// The test's load balancer: each request goes to the next process; a process that refuses
/// the connection is skipped.
async fn round_robin(listener: tokio::net::TcpListener, backends: Vec<String>) {
    struct Proxy {
        backends: Vec<String>,
        next: AtomicUsize,
        http: reqwest::Client,
    }
    async fn forward(State(proxy): State<Arc<Proxy>>, req: Request) -> Response {
        let (parts, body) = req.into_parts();
        let body = axum::body::to_bytes(body, 200 << 20).await.unwrap_or_default();
        let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        for _ in 0..proxy.backends.len() {
            let i = proxy.next.fetch_add(1, Ordering::Relaxed) % proxy.backends.len();
            let mut headers = parts.headers.clone();
            headers.remove(http::header::HOST);
            let sent = proxy
                .http
                .request(parts.method.clone(), format!("{}{path}", proxy.backends[i]))
                .headers(headers)
                .body(body.clone())
                .send()
                .await;
            match sent {
                Ok(resp) => {
                    let mut answer = Response::builder().status(resp.status());
                    for (name, value) in resp.headers() {
                        if name != http::header::TRANSFER_ENCODING && name != http::header::CONNECTION {
                            answer = answer.header(name, value);
                        }
                    }
                    let bytes = resp.bytes().await.unwrap_or_default();
                    return answer.body(Body::from(bytes)).unwrap();
                }
                Err(e) if e.is_connect() => continue,
                Err(_) => break,
            }
        }
        Response::builder().status(502).body(Body::empty()).unwrap()
    }
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let proxy = Arc::new(Proxy { backends, next: AtomicUsize::new(0), http });
    let app = axum::Router::new().fallback(forward).with_state(proxy);
    axum::serve(listener, app).await.unwrap();
}

/// A long-poll held by one process returns within 50 ms of an event sent through another
/// (the median of ten rounds, measured from the send's 200 to the sync's answer: single
/// rounds on a loaded test machine stall for scheduling, not for the wake-up).
#[tokio::test]
async fn long_poll_wakes_across_processes() {
    if !postgres() {
        return;
    }
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let room = alice.create_room().await;
    bob.join(&room).await;
    let bob_on_0 = bob.via(cluster.base_of(0));
    let mut since = bob_on_0.sync("timeout=0").await["next_batch"].as_str().unwrap().to_owned();
    // Sent through process 0 itself, for comparison, then through process 1.
    let mut medians = Vec::new();
    for sender in [0, 1] {
        let alice_there = alice.via(cluster.base_of(sender));
        let mut latencies = Vec::new();
        for round in 0..10 {
            let poll = {
                let bob = bob_on_0.clone();
                let since = since.clone();
                tokio::spawn(async move {
                    let sync = bob.sync(&format!("timeout=20000&since={since}")).await;
                    (sync, Instant::now())
                })
            };
            // Let the long-poll settle into its wait first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            let text = format!("from {sender} round {round}");
            let (status, _) = alice_there.send(&room, &format!("t{sender}.{round}"), &text).await.unwrap();
            let acknowledged = Instant::now();
            assert_eq!(status, 200);
            let (sync, woken) = poll.await.unwrap();
            let events = &sync["rooms"]["join"][&room]["timeline"]["events"];
            assert!(events.as_array().unwrap().iter().any(|e| e["content"]["body"] == text.as_str()), "{sync}");
            latencies.push(woken.saturating_duration_since(acknowledged));
            since = sync["next_batch"].as_str().unwrap().to_owned();
        }
        latencies.sort();
        eprintln!("scale: long-poll on process 0, event sent through process {sender}: woken after {latencies:?}");
        medians.push(latencies[latencies.len() / 2]);
    }
    eprintln!("scale: median wake-up, same process {:?}, across processes {:?}", medians[0], medians[1]);
    assert!(medians[1] < Duration::from_millis(50), "long-polls took a median {:?} to wake", medians[1]);
}

/// Registration (UIA), rooms, typing and redactions through the round-robin: each request
/// may land on another process.
#[tokio::test]
async fn requests_spread_over_processes_see_one_server() {
    if !postgres() {
        return;
    }
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let room = alice.create_room().await;
    bob.join(&room).await;

    // Typing set on one process is seen by a sync on every process.
    let path = format!("/_matrix/client/v3/rooms/{}/typing/{}", enc(&room), enc(&alice.user_id));
    let typing_body = json!({ "typing": true, "timeout": 30000 });
    alice.via(cluster.base_of(0)).ok(reqwest::Method::PUT, &path, Some(typing_body)).await;
    for i in 0..PROCESSES {
        let bob_here = bob.via(cluster.base_of(i));
        crate::harness::wait_for("typing seen on every process", async || {
            let sync = bob_here.sync("timeout=0").await;
            let ephemeral = &sync["rooms"]["join"][&room]["ephemeral"]["events"];
            ephemeral.as_array().is_some_and(|events| {
                events.iter().any(|e| e["type"] == "m.typing" && e["content"]["user_ids"][0] == alice.user_id.as_str())
            })
        })
        .await;
    }

    // A redaction through one process is seen by another that had the event cached.
    let (_, sent) = alice.send(&room, "r1", "to be redacted").await.unwrap();
    let event_id = sent["event_id"].as_str().unwrap().to_owned();
    let event_path = format!("/_matrix/client/v3/rooms/{}/event/{}", enc(&room), enc(&event_id));
    for i in 0..PROCESSES {
        let event = bob.via(cluster.base_of(i)).ok(reqwest::Method::GET, &event_path, None).await;
        assert_eq!(event["content"]["body"], "to be redacted");
    }
    let redact = format!("/_matrix/client/v3/rooms/{}/redact/{}/x1", enc(&room), enc(&event_id));
    alice.via(cluster.base_of(1)).ok(reqwest::Method::PUT, &redact, Some(json!({}))).await;
    for i in 0..PROCESSES {
        let bob_here = bob.via(cluster.base_of(i));
        crate::harness::wait_for("the redaction seen on every process", async || {
            let event = bob_here.ok(reqwest::Method::GET, &event_path, None).await;
            event["content"] == json!({})
        })
        .await;
    }

    // Shared-secret registration: the nonce from one process, the registration on another.
    cluster.register_with_secret("carol", false).await;

    // Everything any process answers is the same server: the messages are all there.
    for i in 0..6 {
        let (status, _) = alice.send(&room, &format!("m{i}"), &format!("message {i}")).await.unwrap();
        assert_eq!(status, 200);
    }
    let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=50", enc(&room));
    for i in 0..PROCESSES {
        let page = bob.via(cluster.base_of(i)).ok(reqwest::Method::GET, &path, None).await;
        let bodies: Vec<&str> =
            page["chunk"].as_array().unwrap().iter().filter_map(|e| e["content"]["body"].as_str()).collect();
        assert!((0..6).all(|n| bodies.contains(&format!("message {n}").as_str())), "process {i}: {bodies:?}");
    }
}

/// One process is killed while clients send through the round-robin: no event that got a
/// 200 is lost, and the other processes go on serving (the dead one's room locks go with
/// its database sessions).
#[tokio::test]
async fn killing_a_process_under_send_load_loses_nothing() {
    if !postgres() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let mut clients = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        clients.push(cluster.register(name).await);
    }
    let room = clients[0].create_room().await;
    for c in &clients[1..] {
        c.join(&room).await;
    }
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = clients
        .iter()
        .enumerate()
        .map(|(index, client)| {
            let (client, room, stop) = (client.clone(), room.clone(), stop.clone());
            tokio::spawn(async move {
                let mut acked = Vec::new();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    let text = format!("client {index} message {seq}");
                    // A failed request (the process died under it) is retried with its
                    // transaction ID: the same event if it was committed.
                    match client.send(&room, &format!("t{seq}"), &text).await {
                        Ok((200, body)) => {
                            acked.push((body["event_id"].as_str().unwrap().to_owned(), text, Instant::now()));
                            seq += 1;
                        }
                        _ => tokio::time::sleep(Duration::from_millis(20)).await,
                    }
                }
                acked
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let killed_at = Instant::now();
    cluster.kill(1);
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let mut acked = Vec::new();
    for task in tasks {
        acked.extend(task.await.unwrap());
    }
    let after_kill = acked.iter().filter(|(_, _, at)| *at > killed_at + Duration::from_secs(1)).count();
    assert!(after_kill > 10, "the other processes did not go on: {after_kill} sends acknowledged after the kill");

    let reader = clients[1].via(cluster.base_of(2));
    let mut timeline = std::collections::HashMap::new();
    let mut from = String::new();
    loop {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=f&limit=500{from}", enc(&room));
        let page = reader.ok(reqwest::Method::GET, &path, None).await;
        let chunk = page["chunk"].as_array().cloned().unwrap_or_default();
        if chunk.is_empty() {
            break;
        }
        for e in chunk {
            if let Some(body) = e["content"]["body"].as_str() {
                assert!(timeline.insert(body.to_owned(), e["event_id"].clone()).is_none(), "{body} is there twice");
            }
        }
        match page["end"].as_str() {
            Some(end) => from = format!("&from={end}"),
            None => break,
        }
    }
    for (event_id, text, _) in &acked {
        assert_eq!(timeline.get(text).and_then(Value::as_str), Some(event_id.as_str()), "{text} is lost");
    }
    eprintln!("scale: {} acknowledged events all present, {after_kill} after the kill", acked.len());
}

/// The federation sender runs on one process; when it is killed, a standby takes over and
/// what is sent afterwards still reaches the other server.
#[tokio::test]
async fn federation_sender_fails_over() {
    if !postgres() {
        return;
    }
    let mut cluster = Cluster::start().await;
    let remote = fed_server("127.0.0.2").await;
    let alice = cluster.register("alice").await;
    let bob = remote.register("bob").await;
    let room = alice.create_room().await;
    let join = format!("/_matrix/client/v3/join/{}?server_name={}", enc(&room), enc(&cluster.server_name));
    bob.post(&join, json!({})).await.ok();
    let leader = cluster.leader().await;

    let delivered = async |text: &str| {
        let path = format!("/_matrix/client/v3/rooms/{}/messages?dir=b&limit=20", enc(&room));
        let page = bob.get(&path).await;
        page.body["chunk"].as_array().is_some_and(|c| c.iter().any(|e| e["content"]["body"] == text))
    };
    let (status, _) = alice.send(&room, "before", "before the failover").await.unwrap();
    assert_eq!(status, 200);
    crate::harness::wait_for("delivery by the first leader", async || delivered("before the failover").await).await;

    cluster.kill(leader);
    let killed = Instant::now();
    let (status, _) = alice.send(&room, "after", "after the failover").await.unwrap();
    assert_eq!(status, 200);
    crate::harness::wait_for("delivery by the new leader", async || delivered("after the failover").await).await;
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, leader);
    eprintln!("scale: the federation sender failed over in {:?}", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(10), "failover took {:?}", killed.elapsed());
}

/// The acceptance scenarios accounts, rooms and sync through the round-robin (when
/// PLEXUS_ACCEPTANCE_DIR names the suite).
#[tokio::test]
async fn acceptance_through_the_round_robin() {
    if !postgres() {
        return;
    }
    let Some(suite) = std::env::var_os("PLEXUS_ACCEPTANCE_DIR") else {
        eprintln!("scale: acceptance skipped, set PLEXUS_ACCEPTANCE_DIR to the acceptance suite");
        return;
    };
    let cluster = Cluster::start().await;
    let base = cluster.base();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(std::path::Path::new(&suite).join("run.sh"))
            .args(["--url", &base, "accounts", "rooms", "sync"])
            .output()
            .expect("run.sh runs")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    eprintln!("{stdout}");
    assert!(output.status.success(), "acceptance failed: {}", String::from_utf8_lossy(&output.stderr));
}

/// A room deleted through one process: every process answers its status, by delete ID and
/// by room, from the database.
#[tokio::test]
async fn room_deletion_status_from_any_process() {
    if !postgres() {
        return;
    }
    let cluster = Cluster::start().await;
    let admin = cluster.register_with_secret("root", true).await;
    let alice = cluster.register("alice").await;
    let room = alice.create_room().await;
    let path = format!("/_synapse/admin/v2/rooms/{}", enc(&room));
    let body = json!({ "purge": true });
    let deleted = admin.via(cluster.base_of(0)).ok(reqwest::Method::DELETE, &path, Some(body)).await;
    let delete_id = deleted["delete_id"].as_str().unwrap();
    for i in 1..PROCESSES {
        let admin_here = admin.via(cluster.base_of(i));
        let by_id = format!("/_synapse/admin/v2/rooms/delete_status/{delete_id}");
        let status = admin_here.ok(reqwest::Method::GET, &by_id, None).await;
        assert_eq!((status["status"].as_str(), status["room_id"].as_str()), (Some("complete"), Some(room.as_str())));
        assert_eq!(status["shutdown_room"]["kicked_users"], json!([alice.user_id]), "{status}");
        let by_room = admin_here.ok(reqwest::Method::GET, &format!("{path}/delete_status"), None).await;
        assert_eq!(by_room["results"][0]["delete_id"], json!(delete_id), "{by_room}");
    }
    let admin_on_2 = admin.via(cluster.base_of(2));
    let unknown = admin_on_2.call(reqwest::Method::GET, "/_synapse/admin/v2/rooms/delete_status/x", None).await;
    assert_eq!(unknown.unwrap().0, 404);
}

/// Edits of one user's push rules through every process at once: none is lost (each reads
/// the stored rules with their row locked).
#[tokio::test]
async fn concurrent_push_rule_edits_on_several_processes_are_all_kept() {
    if !postgres() {
        return;
    }
    let cluster = Cluster::start().await;
    let alice = cluster.register("alice").await;
    // The rules exist (the server default) before the race, as for any user who synced.
    alice.ok(reqwest::Method::GET, "/_matrix/client/v3/pushrules/", None).await;
    const EDITS: usize = 24;
    let edits = (0..EDITS).map(|n| {
        let alice = alice.via(cluster.base_of(n % PROCESSES));
        async move {
            let path = format!("/_matrix/client/v3/pushrules/global/override/rule{n}");
            let rule = json!({ "actions": ["dont_notify"], "conditions": [
                { "kind": "event_match", "key": "content.body", "pattern": format!("word{n}") }
            ] });
            alice.ok(reqwest::Method::PUT, &path, Some(rule)).await;
        }
    });
    futures::future::join_all(edits).await;
    // Every process has them all once the last invalidation reached it (a lost edit never
    // comes back).
    for i in 0..PROCESSES {
        let alice_here = alice.via(cluster.base_of(i));
        crate::harness::wait_for(&format!("every rule on process {i}"), async || {
            let rules = alice_here.ok(reqwest::Method::GET, "/_matrix/client/v3/pushrules/", None).await;
            let ids: Vec<&str> =
                rules["global"]["override"].as_array().unwrap().iter().filter_map(|r| r["rule_id"].as_str()).collect();
            (0..EDITS).all(|n| ids.contains(&format!("rule{n}").as_str()))
        })
        .await;
    }
}

/// The login rate limit holds for the deployment, not for each process: failed logins spread
/// over the processes are refused once the one shared bucket is empty.
#[tokio::test]
async fn login_rate_limit_is_shared_by_the_processes() {
    if !postgres() {
        return;
    }
    let config = "[rate_limits]\nenabled = true\nper_second = 0.01\nburst = 4.0\n";
    let cluster = Cluster::start_with(config, &[("PLEXUS_RATE_LIMITS", "on")]).await;
    let mut statuses = Vec::new();
    for n in 0..3 * PROCESSES {
        let url = format!("{}/_matrix/client/v3/login", cluster.base_of(n % PROCESSES));
        let body = json!({ "type": "m.login.password", "identifier": { "type": "m.id.user", "user": "nobody" },
            "password": "wrong" });
        statuses.push(cluster.http.post(&url).json(&body).send().await.unwrap().status().as_u16());
    }
    // Four attempts in all, not four on each process.
    assert_eq!(statuses.iter().filter(|&&s| s != 429).count(), 4, "{statuses:?}");
    assert!(statuses[..4].iter().all(|&s| s == 403), "{statuses:?}");
}

/// Presence across processes: a user syncing through one process is online for a room-mate
/// syncing through another, stays online while syncs go on through any process, and goes
/// offline once they stop (the timers of the leader, with a 2 s timeout here).
#[tokio::test]
async fn presence_follows_syncs_across_processes() {
    if !postgres() {
        return;
    }
    let cluster = Cluster::start_with("[presence]\noffline_after = \"2s\"\n", &[]).await;
    let alice = cluster.register("alice").await;
    let bob = cluster.register("bob").await;
    let room = alice.create_room().await;
    bob.join(&room).await;
    let bob_on_0 = bob.via(cluster.base_of(0));
    let since = bob_on_0.sync("timeout=0&set_presence=offline").await["next_batch"].as_str().unwrap().to_owned();
    let presence_of = |sync: &Value, user: &str| {
        sync["presence"]["events"].as_array().unwrap().iter().find(|e| e["sender"] == user).cloned()
    };

    alice.via(cluster.base_of(1)).sync("timeout=0").await;
    let sync = bob_on_0.sync(&format!("timeout=10000&since={since}&set_presence=offline")).await;
    let seen = presence_of(&sync, &alice.user_id).unwrap_or_else(|| panic!("no presence of alice: {sync}"));
    assert_eq!(
        (seen["content"]["presence"].as_str(), seen["content"]["currently_active"].as_bool()),
        (Some("online"), Some(true))
    );
    let since = sync["next_batch"].as_str().unwrap().to_owned();

    // Syncs through every process for three times the timeout: still online.
    let status_path = format!("/_matrix/client/v3/presence/{}/status", enc(&alice.user_id));
    let until = Instant::now() + Duration::from_secs(6);
    let mut i = 0;
    while Instant::now() < until {
        alice.via(cluster.base_of(i % PROCESSES)).sync("timeout=500").await;
        i += 1;
    }
    let status = bob.via(cluster.base_of(2)).ok(reqwest::Method::GET, &status_path, None).await;
    assert_eq!(status["presence"], "online", "{status}");

    // Once the syncs stop: offline, seen by bob's long-poll on another process.
    let stopped = Instant::now();
    let sync = bob_on_0.sync(&format!("timeout=20000&since={since}&set_presence=offline")).await;
    let seen = presence_of(&sync, &alice.user_id).unwrap_or_else(|| panic!("no presence of alice: {sync}"));
    assert_eq!(seen["content"]["presence"], "offline", "{sync}");
    let after = stopped.elapsed();
    assert!(after >= Duration::from_millis(1500) && after < Duration::from_secs(10), "offline after {after:?}");
}
