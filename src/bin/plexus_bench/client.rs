//! A minimal Matrix client over reqwest: just the client-server calls the scenarios make.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// How the tool creates its accounts.
#[derive(Clone)]
pub enum Registration {
    /// `POST /register` with the `m.login.dummy` stage.
    Open,
    /// Synapse's shared-secret registration, which Plexus also speaks.
    SharedSecret(String),
}

/// A homeserver and the HTTP connection pool used for it.
#[derive(Clone)]
pub struct Server {
    base: Arc<str>,
    http: reqwest::Client,
    registration: Registration,
}

/// Every account of a run uses this password; hashing it is set-up cost, never measured.
const PASSWORD: &str = "bench-password-0";

/// Long-polls are held up to 30 s; anything slower than this is a failure.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

impl Server {
    pub fn new(base: &str, registration: Registration) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .pool_max_idle_per_host(usize::MAX)
            .tcp_nodelay(true)
            .build()?;
        Ok(Server { base: base.trim_end_matches('/').into(), http, registration })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn check_up(&self) -> anyhow::Result<()> {
        self.request(Method::GET, "/_matrix/client/versions", None, None).await.map(|_| ())
    }

    /// Sends one request and answers the JSON body of a 2xx reply, or an error naming the
    /// call, the status and the body.
    async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<Value> {
        let (status, value) = self.request_any(method.clone(), path, token, body).await?;
        if !status.is_success() {
            bail!("{method} {path}: {status} {value}");
        }
        Ok(value)
    }

    /// Like `request`, but answers non-2xx replies too (UIA answers 401 with its flows).
    async fn request_any(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<&Value>,
    ) -> anyhow::Result<(StatusCode, Value)> {
        let mut req = self.http.request(method.clone(), self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req.send().await.with_context(|| format!("{method} {path}"))?;
        let status = resp.status();
        let bytes = resp.bytes().await.with_context(|| format!("{method} {path}: reading the body"))?;
        let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(&bytes)));
        Ok((status, value))
    }

    /// Creates an account and logs it in.
    pub async fn register(&self, localpart: &str) -> anyhow::Result<User> {
        let body = match &self.registration {
            Registration::Open => self.register_open(localpart).await?,
            Registration::SharedSecret(secret) => self.register_shared_secret(localpart, secret).await?,
        };
        self.user_from_login(&body)
    }

    async fn register_open(&self, localpart: &str) -> anyhow::Result<Value> {
        let path = "/_matrix/client/v3/register";
        let mut body = json!({ "username": localpart, "password": PASSWORD, "inhibit_login": false });
        let (status, first) = self.request_any(Method::POST, path, None, Some(&body)).await?;
        if status.is_success() {
            return Ok(first);
        }
        let session = first["session"].as_str().ok_or_else(|| anyhow!("POST {path}: {status} {first}"))?;
        body["auth"] = json!({ "type": "m.login.dummy", "session": session });
        self.request(Method::POST, path, None, Some(&body)).await
    }

    async fn register_shared_secret(&self, localpart: &str, secret: &str) -> anyhow::Result<Value> {
        let path = "/_synapse/admin/v1/register";
        let nonce = self.request(Method::GET, path, None, None).await?;
        let nonce = nonce["nonce"].as_str().ok_or_else(|| anyhow!("GET {path}: no nonce in {nonce}"))?;
        let mac = shared_secret_mac(secret, nonce, localpart, PASSWORD)?;
        let body = json!({ "nonce": nonce, "username": localpart, "password": PASSWORD, "admin": false, "mac": mac });
        self.request(Method::POST, path, None, Some(&body)).await
    }

    fn user_from_login(&self, body: &Value) -> anyhow::Result<User> {
        let field = |k: &str| body[k].as_str().map(str::to_owned).ok_or_else(|| anyhow!("no {k} in {body}"));
        Ok(User {
            server: self.clone(),
            user_id: field("user_id")?,
            token: field("access_token")?,
            next_txn: Arc::new(AtomicU64::new(0)),
        })
    }
}

/// The `mac` of shared-secret registration of a non-admin: hex HMAC-SHA1 over
/// nonce, user, password and "notadmin", NUL-separated.
fn shared_secret_mac(secret: &str, nonce: &str, localpart: &str, password: &str) -> anyhow::Result<String> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())?;
    for (i, part) in [nonce, localpart, password, "notadmin"].iter().enumerate() {
        if i > 0 {
            mac.update(b"\0");
        }
        mac.update(part.as_bytes());
    }
    Ok(hex::encode(mac.finalize().into_bytes()))
}

/// A logged-in device.
#[derive(Clone)]
pub struct User {
    pub server: Server,
    pub user_id: String,
    token: String,
    next_txn: Arc<AtomicU64>,
}

/// A `/sync` answer, timed when its body had fully arrived (before parsing).
pub struct SyncAnswer {
    pub body: Value,
    pub received: Instant,
    pub bytes: usize,
}

/// Query-string encoding for a path segment (room IDs hold `!` and `:`).
fn encode(segment: &str) -> String {
    url::form_urlencoded::byte_serialize(segment.as_bytes()).collect::<String>().replace('+', "%20")
}

impl User {
    async fn call(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<Value> {
        self.server.request(method, path, Some(&self.token), body).await
    }

    /// The server name part of the user ID.
    pub fn server_name(&self) -> &str {
        self.user_id.split_once(':').map_or("", |(_, s)| s)
    }

    /// Logs in again, as a new device with a token of its own.
    pub async fn new_device(&self) -> anyhow::Result<User> {
        let body = json!({
            "type": "m.login.password",
            "identifier": { "type": "m.id.user", "user": self.user_id },
            "password": PASSWORD,
        });
        let reply = self.server.request(Method::POST, "/_matrix/client/v3/login", None, Some(&body)).await?;
        self.server.user_from_login(&reply)
    }

    pub async fn create_room(&self, public: bool, name: &str) -> anyhow::Result<String> {
        let preset = if public { "public_chat" } else { "private_chat" };
        let body = json!({ "preset": preset, "name": name });
        let reply = self.call(Method::POST, "/_matrix/client/v3/createRoom", Some(&body)).await?;
        reply["room_id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("createRoom: no room_id in {reply}"))
    }

    /// Joins a room by ID, through `via` when it lives on another server.
    pub async fn join(&self, room_id: &str, via: Option<&str>) -> anyhow::Result<()> {
        let mut path = format!("/_matrix/client/v3/join/{}", encode(room_id));
        if let Some(server) = via {
            path.push_str(&format!("?server_name={}", encode(server)));
        }
        self.call(Method::POST, &path, Some(&json!({}))).await.map(|_| ())
    }

    /// Sends an `m.room.message` and answers its event ID.
    pub async fn send_text(&self, room_id: &str, text: &str) -> anyhow::Result<String> {
        let txn = self.next_txn.fetch_add(1, Ordering::Relaxed);
        let path = format!("/_matrix/client/v3/rooms/{}/send/m.room.message/bench{txn}", encode(room_id));
        let body = json!({ "msgtype": "m.text", "body": text });
        let reply = self.call(Method::PUT, &path, Some(&body)).await?;
        reply["event_id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("send: no event_id in {reply}"))
    }

    /// Uploads a sync filter and answers its ID, which clients such as Element then name in
    /// every `/sync` (instead of the whole filter).
    pub async fn upload_filter(&self, filter: &Value) -> anyhow::Result<String> {
        let path = format!("/_matrix/client/v3/user/{}/filter", encode(&self.user_id));
        let reply = self.call(Method::POST, &path, Some(filter)).await?;
        reply["filter_id"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("filter: no filter_id in {reply}"))
    }

    /// `GET /sync`; `filter` is the ID of an uploaded filter.
    pub async fn sync(&self, since: Option<&str>, timeout_ms: u64, filter: &str) -> anyhow::Result<SyncAnswer> {
        let timeout = timeout_ms.to_string();
        let mut query = vec![("filter", filter), ("timeout", timeout.as_str())];
        if let Some(s) = since {
            query.push(("since", s));
        }
        let resp = self
            .server
            .http
            .get(self.server.url("/_matrix/client/v3/sync"))
            .bearer_auth(&self.token)
            .query(&query)
            .send()
            .await
            .context("GET /sync")?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("GET /sync: reading the body")?;
        let received = Instant::now();
        if !status.is_success() {
            bail!("GET /sync: {status} {}", String::from_utf8_lossy(&bytes));
        }
        let body: Value = serde_json::from_slice(&bytes).context("GET /sync: not JSON")?;
        Ok(SyncAnswer { body, received, bytes: bytes.len() })
    }
    /// A Simplified Sliding Sync (MSC4186) request: `pos` continues a connection.
    pub async fn sliding_sync(&self, pos: Option<&str>, timeout_ms: u64, body: &Value) -> anyhow::Result<SyncAnswer> {
        let timeout = timeout_ms.to_string();
        let mut query = vec![("timeout", timeout.as_str())];
        if let Some(p) = pos {
            query.push(("pos", p));
        }
        let resp = self
            .server
            .http
            .post(self.server.url("/_matrix/client/unstable/org.matrix.simplified_msc3575/sync"))
            .bearer_auth(&self.token)
            .query(&query)
            .json(body)
            .send()
            .await
            .context("POST sliding sync")?;
        let status = resp.status();
        let bytes = resp.bytes().await.context("sliding sync: reading the body")?;
        let received = Instant::now();
        if !status.is_success() {
            bail!("sliding sync: {status} {}", String::from_utf8_lossy(&bytes));
        }
        let body: Value = serde_json::from_slice(&bytes).context("sliding sync: not JSON")?;
        Ok(SyncAnswer { body, received, bytes: bytes.len() })
    }
}

impl SyncAnswer {
    pub fn next_batch(&self) -> anyhow::Result<String> {
        self.body["next_batch"].as_str().map(str::to_owned).ok_or_else(|| anyhow!("/sync: no next_batch"))
    }

    /// The room's entry under `rooms.join`, if any.
    pub fn joined_room(&self, room_id: &str) -> Option<&Value> {
        self.body["rooms"]["join"].get(room_id)
    }

    /// Event IDs of the room's timeline in this answer.
    pub fn timeline_ids(&self, room_id: &str) -> Vec<String> {
        self.joined_room(room_id)
            .and_then(|r| r["timeline"]["events"].as_array())
            .map(|events| events.iter().filter_map(|e| e["event_id"].as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_secret_mac_matches_synapse() {
        // hmac.new(b"secret", b"abc\0alice\0pw\0notadmin", hashlib.sha1).hexdigest()
        let mac = shared_secret_mac("secret", "abc", "alice", "pw").unwrap();
        assert_eq!(mac, "42e32623fe124933c326f9d2d67ff7c617915a10");
    }

    #[test]
    fn room_ids_are_escaped_in_paths() {
        assert_eq!(encode("!room id:example.org"), "%21room%20id%3Aexample.org");
    }
}
