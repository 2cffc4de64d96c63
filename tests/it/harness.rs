//! The shared test rig: start a Plexus server on a loopback port, register users, and
//! speak JSON to it.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};

use plexus::config::{Config, RegistrationMode};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// A running server. Dropping it stops the server (and its temp dir goes away).
pub struct TestServer {
    pub addr: SocketAddr,
    pub base: String,
    pub server_name: String,
    pub config: Config,
    pub client: reqwest::Client,
    /// The server's own state, for white-box checks (stored PDUs, keys).
    pub state: plexus::AppState,
    _dir: tempfile::TempDir,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// A fresh database URL for one server.
pub async fn fresh_database(dir: &std::path::Path) -> String {
    match std::env::var("PLEXUS_TEST_DATABASE_URL") {
        Ok(server) if !server.is_empty() => {
            use sqlx::Connection;
            let name = format!("plexus_it_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
            let server = server.trim_end_matches('/');
            let mut conn =
                sqlx::PgConnection::connect(&format!("{server}/postgres")).await.expect("connect to PostgreSQL");
            sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                .await
                .expect("drop database");
            sqlx::Executor::execute(&mut conn, sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .await
                .expect("create database");
            format!("{server}/{name}")
        }
        _ => format!("sqlite://{}/plexus.db", dir.display()),
    }
}

impl TestServer {
    /// A server with open registration and no rate limits on 127.0.0.1.
    pub async fn start() -> Self {
        Self::start_with(|_| {}).await
    }

    /// Like `start`, with a chance to change the config first.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::start_on("127.0.0.1", adjust).await
    }

    /// A server on a given loopback address (federation tests use 127.0.0.x).
    pub async fn start_on(ip: &str, adjust: impl FnOnce(&mut Config)) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let listener = tokio::net::TcpListener::bind(format!("{ip}:0")).await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server_name = addr.to_string();
        let mut config = Config::with_server_name(&server_name);
        config.listen.client = addr;
        config.data_dir = dir.path().to_owned();
        config.database.url = fresh_database(dir.path()).await;
        config.database.max_connections = 4;
        config.registration.mode = RegistrationMode::Open;
        config.rate_limits.enabled = false;
        adjust(&mut config);
        Self::launch(listener, config, dir).await
    }

    async fn launch(listener: tokio::net::TcpListener, config: Config, dir: tempfile::TempDir) -> Self {
        let addr = listener.local_addr().expect("local addr");
        let state = plexus::AppState::build(config.clone()).await.expect("server builds");
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let task = tokio::spawn(async move {
            plexus::run(state, listener, async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestServer {
            addr,
            base: format!("http://{addr}"),
            server_name: addr.to_string(),
            config,
            client: reqwest::Client::new(),
            state: app_state,
            _dir: dir,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// Stops the server, keeping its data (and address) for `Stopped::start`.
    pub async fn stop_keeping_data(mut self) -> Stopped {
        self.halt().await;
        let dir = std::mem::replace(&mut self._dir, tempfile::tempdir().expect("temp dir"));
        Stopped { addr: self.addr, config: self.config.clone(), dir }
    }

    async fn halt(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the server and waits until it has stopped.
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// A raw request: method, path (from the root), optional token and JSON body.
    pub async fn request(&self, method: Method, path: &str, token: Option<&str>, body: Option<&Value>) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        Reply::from(req.send().await.expect("request sent")).await
    }

    /// A request with a raw body.
    pub async fn request_raw(&self, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> Reply {
        let mut req = self.client.request(method, format!("{}{path}", self.base)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        Reply::from(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None, None).await
    }

    /// Registers a user through UIA (challenge, then `m.login.dummy`) with password `password`.
    pub async fn register(&self, localpart: &str) -> TestUser {
        let mut body = json!({ "username": localpart, "password": "password", "initial_device_display_name": "test" });
        let r = self.request(Method::POST, "/_matrix/client/v3/register", None, Some(&body)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
        body["auth"] = json!({ "type": "m.login.dummy", "session": r.body["session"] });
        let r = self.request(Method::POST, "/_matrix/client/v3/register", None, Some(&body)).await;
        assert_eq!(r.status, StatusCode::OK, "{r:?}");
        TestUser {
            server: self.clone_handle(),
            user_id: r.body["user_id"].as_str().expect("user_id").to_owned(),
            device_id: r.body["device_id"].as_str().expect("device_id").to_owned(),
            token: r.body["access_token"].as_str().expect("access_token").to_owned(),
        }
    }

    /// Logs in again as an existing user (a new device).
    pub async fn login(&self, localpart: &str, password: &str) -> Reply {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": localpart },
            "password": password,
        });
        self.request(Method::POST, "/_matrix/client/v3/login", None, Some(&body)).await
    }

    fn clone_handle(&self) -> ServerHandle {
        ServerHandle { base: self.base.clone(), client: self.client.clone(), server_name: self.server_name.clone() }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A stopped server's data and address.
pub struct Stopped {
    addr: SocketAddr,
    config: Config,
    dir: tempfile::TempDir,
}

impl Stopped {
    /// Starts the server again on the same address, database and data directory.
    pub async fn start(self) -> TestServer {
        let listener = tokio::net::TcpListener::bind(self.addr).await.expect("bind the same address");
        TestServer::launch(listener, self.config, self.dir).await
    }
}

/// What a user needs to reach its server.
#[derive(Clone)]
pub struct ServerHandle {
    pub base: String,
    pub client: reqwest::Client,
    pub server_name: String,
}

/// A registered, logged-in user.
#[derive(Clone)]
pub struct TestUser {
    pub server: ServerHandle,
    pub user_id: String,
    pub device_id: String,
    pub token: String,
}

impl TestUser {
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Reply {
        let mut req =
            self.server.client.request(method, format!("{}{path}", self.server.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(b);
        }
        Reply::from(req.send().await.expect("request sent")).await
    }

    pub async fn get(&self, path: &str) -> Reply {
        self.request(Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: Value) -> Reply {
        self.request(Method::POST, path, Some(&body)).await
    }

    pub async fn put(&self, path: &str, body: Value) -> Reply {
        self.request(Method::PUT, path, Some(&body)).await
    }

    pub async fn delete(&self, path: &str, body: Value) -> Reply {
        self.request(Method::DELETE, path, Some(&body)).await
    }

    /// The same user with another access token (e.g. a second device).
    pub fn with_token(&self, token: &str, device_id: &str) -> TestUser {
        TestUser { token: token.to_owned(), device_id: device_id.to_owned(), ..self.clone() }
    }
}

/// An HTTP answer: status, headers and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
}

impl Reply {
    async fn from(resp: reqwest::Response) -> Self {
        let status = resp.status();
        let headers = resp.headers().clone();
        let bytes = resp.bytes().await.expect("body read");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply { status, headers, body }
    }

    pub fn errcode(&self) -> &str {
        self.body["errcode"].as_str().unwrap_or("")
    }

    /// Asserts a 200 and returns the body.
    #[track_caller]
    pub fn ok(self) -> Value {
        assert_eq!(self.status, StatusCode::OK, "expected 200, got {self:?}");
        self.body
    }

    /// Asserts the status and errcode of an error answer.
    #[track_caller]
    pub fn assert_error(&self, status: u16, errcode: &str) {
        assert_eq!((self.status.as_u16(), self.errcode()), (status, errcode), "{self:?}");
    }
}

impl TestUser {
    /// Creates a room with the given createRoom body; returns its ID.
    pub async fn create_room(&self, body: Value) -> String {
        let r = self.post("/_matrix/client/v3/createRoom", body).await.ok();
        r["room_id"].as_str().expect("room_id").to_owned()
    }

    /// Sends a text message; returns the event ID.
    pub async fn send_text(&self, room_id: &str, text: &str) -> String {
        let txn = format!("t{}", NEXT.fetch_add(1, Ordering::SeqCst));
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/{txn}", enc(room_id));
        let r = self.put(&path, json!({ "msgtype": "m.text", "body": text })).await.ok();
        r["event_id"].as_str().expect("event_id").to_owned()
    }

    /// Sends the text messages "m0", "m1", ... (`count` of them); returns their event IDs in
    /// order.
    pub async fn send_numbered(&self, room_id: &str, count: usize) -> Vec<String> {
        let mut sent = Vec::with_capacity(count);
        for i in 0..count {
            sent.push(self.send_text(room_id, &format!("m{i}")).await);
        }
        sent
    }

    /// Joins a room.
    pub async fn join(&self, room_id: &str) -> Reply {
        self.post(&format!("/_matrix/client/v3/join/{}", enc(room_id)), json!({})).await
    }

    /// One /sync with a query string (e.g. "timeout=0&since=...").
    pub async fn sync(&self, query: &str) -> Value {
        self.get(&format!("/_matrix/client/v3/sync?{query}")).await.ok()
    }
}

/// Percent-encodes a path segment.
pub fn enc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A server on `ip` that speaks plain HTTP to other test servers (federation tests).
pub async fn fed_server(ip: &str) -> TestServer {
    TestServer::start_on(ip, |c| c.federation.insecure_plain_http = true).await
}

/// A test server's name as a ruma server name.
pub fn name_of(server: &TestServer) -> ruma::OwnedServerName {
    server.state.config.server_name.as_str().try_into().expect("server name")
}

/// Polls `done` every 100 ms until it holds; panics after 30 s.
pub async fn wait_for(what: &str, mut done: impl AsyncFnMut() -> bool) {
    for _ in 0..300 {
        if done().await {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// A server process started by a test, killed when dropped (also when the test fails).
pub struct Process(pub std::process::Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A user of a server that runs as a separate process (crash and scale tests): its requests
/// may fail, as they do while the process is killed.
#[derive(Clone)]
pub struct ProcessClient {
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    pub user_id: String,
}

impl ProcessClient {
    /// Registers `name` (password "password") through UIA's dummy stage: two requests, which
    /// may land on different processes.
    pub async fn register(http: &reqwest::Client, base: &str, name: &str) -> ProcessClient {
        let url = format!("{base}/_matrix/client/v3/register");
        let mut body = json!({ "username": name, "password": "password" });
        let r: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
        body["auth"] = json!({ "type": "m.login.dummy", "session": r["session"] });
        let r: Value = http.post(&url).json(&body).send().await.unwrap().json().await.unwrap();
        let token = r["access_token"].as_str().unwrap_or_else(|| panic!("registered: {r}")).to_owned();
        ProcessClient {
            http: http.clone(),
            base: base.to_owned(),
            token,
            user_id: r["user_id"].as_str().unwrap().into(),
        }
    }

    pub async fn call(&self, method: Method, path: &str, body: Option<Value>) -> reqwest::Result<(u16, Value)> {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).bearer_auth(&self.token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.json().await.unwrap_or(Value::Null)))
    }

    pub async fn ok(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let (status, body) = self.call(method, path, body).await.expect("request sent");
        assert_eq!(status, 200, "{path}: {body}");
        body
    }
}
