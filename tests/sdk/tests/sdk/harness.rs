//! Starts the Plexus binary as a child process (SQLite, or PostgreSQL when
//! `PLEXUS_TEST_DATABASE_URL` is set) and makes matrix-sdk clients for it.

use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use matrix_sdk::config::SyncSettings;
use matrix_sdk::deserialized_responses::TimelineEvent;
use matrix_sdk::ruma::RoomId;
use matrix_sdk::ruma::api::client::{account::register, uiaa};
use matrix_sdk::sliding_sync::VersionBuilder;
use matrix_sdk::{Client, Room, RoomState};

pub const PASSWORD: &str = "correct horse battery staple";

/// A running Plexus process; dropping it kills the process and drops its database.
pub struct Server {
    pub url: String,
    child: Child,
    dir: tempfile::TempDir,
    database: Option<Database>,
}

impl Server {
    /// Starts `PLEXUS_BIN` (default: the main crate's debug build) with open registration
    /// and no rate limits, and waits until it accepts connections.
    pub async fn start() -> Server {
        let bin = std::env::var_os("PLEXUS_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/debug/plexus"));
        assert!(
            bin.is_file(),
            "no Plexus binary at {} (run `cargo build` in the repository root or set PLEXUS_BIN)",
            bin.display()
        );
        let dir = tempfile::tempdir().expect("temp dir");
        // The port is free now; Plexus binds it a moment later, which is good enough on loopback.
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("free port").port();
        let addr = format!("127.0.0.1:{port}");
        let database = std::env::var("PLEXUS_TEST_DATABASE_URL")
            .ok()
            .filter(|url| !url.is_empty())
            .map(|url| Database::create(url.trim_end_matches('/')));
        let database_url = match &database {
            Some(db) => format!("{}/{}", db.server, db.name),
            None => format!("sqlite://{}/plexus.db", dir.path().display()),
        };
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(&bin)
            .arg("serve")
            .env("PLEXUS_SERVER_NAME", &addr)
            .env("PLEXUS_LISTEN", &addr)
            .env("PLEXUS_DATABASE_URL", database_url)
            .env("PLEXUS_DATA_DIR", dir.path())
            .env("PLEXUS_REGISTRATION", "open")
            .env("PLEXUS_RATE_LIMITS", "off")
            .env("PLEXUS_LOG", "info")
            .stdout(log.try_clone().expect("log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let mut server = Server { url: format!("http://{addr}"), child, dir, database };
        let deadline = Instant::now() + Duration::from_secs(60);
        while TcpStream::connect(&addr).is_err() {
            if let Some(status) = server.child.try_wait().expect("poll the server") {
                panic!("Plexus exited ({status}) before listening:\n{}", server.log());
            }
            assert!(Instant::now() < deadline, "Plexus did not listen within 60 s:\n{}", server.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        server
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default()
    }

    /// A client for this server with matrix-sdk's in-memory stores (no session yet). It finds
    /// sliding sync as Element X does, from `unstable_features` in `/versions`.
    pub async fn client(&self) -> Client {
        Client::builder()
            .homeserver_url(&self.url)
            .sliding_sync_version_builder(VersionBuilder::DiscoverNative)
            .build()
            .await
            .expect("client builds")
    }

    /// Registers `name` (through the user-interactive `m.login.dummy` stage that open
    /// registration asks for) and returns a client logged in as its first device.
    pub async fn register(&self, name: &str) -> Client {
        let client = self.client().await;
        let mut request = register::v3::Request::new();
        request.username = Some(name.to_owned());
        request.password = Some(PASSWORD.to_owned());
        let challenge = client.matrix_auth().register(request.clone()).await.expect_err("a UIA challenge");
        let mut dummy = uiaa::Dummy::new();
        dummy.session = challenge.as_uiaa_response().expect("a UIA challenge").session.clone();
        request.auth = Some(uiaa::AuthData::Dummy(dummy));
        client.matrix_auth().register(request).await.expect("registered");
        client
    }

    /// Logs in as `name` again: a new device with its own (empty) stores.
    pub async fn login(&self, name: &str) -> Client {
        let client = self.client().await;
        client.matrix_auth().login_username(name, PASSWORD).send().await.expect("logged in");
        client
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("--- Plexus log ({}) ---\n{}", self.url, self.log());
        }
        if let Some(db) = &self.database {
            db.drop_it();
        }
    }
}

/// A PostgreSQL database of one server, named like the main suite's (`plexus_it_<pid>_<n>`)
/// so CI's clean-up after a crashed run finds it too.
struct Database {
    server: String,
    name: String,
}

static NEXT: AtomicUsize = AtomicUsize::new(0);

impl Database {
    fn create(server: &str) -> Database {
        let name = format!("plexus_it_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::SeqCst));
        let db = Database { server: server.to_owned(), name };
        db.psql(&format!("DROP DATABASE IF EXISTS {}", db.name));
        db.psql(&format!("CREATE DATABASE {}", db.name));
        db
    }

    fn drop_it(&self) {
        self.psql(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }

    /// psql rather than a Rust driver: this crate's build time is what CI pays for.
    fn psql(&self, sql: &str) {
        let status = Command::new("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", &format!("{}/postgres", self.server), "-c", sql])
            .status()
            .expect("run psql");
        assert!(status.success(), "psql {sql}: {status}");
    }
}

/// Keeps `client` syncing (as an app does) until the returned guard is dropped.
pub fn keep_syncing(client: &Client) -> Syncing {
    let client = client.clone();
    Syncing(tokio::spawn(async move {
        let settings = SyncSettings::default().timeout(Duration::from_secs(1));
        client.sync(settings).await.expect("sync loop");
    }))
}

pub struct Syncing(tokio::task::JoinHandle<()>);

impl Drop for Syncing {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Joins a room once the invite has come down `client`'s sync, as an app does. (Joining
/// earlier races the sync in flight, whose invite would then overwrite the join locally.)
pub async fn accept_invite(client: &Client, room_id: &RoomId) -> Room {
    let room =
        wait_for("the invite", async || client.get_room(room_id).filter(|r| r.state() == RoomState::Invited)).await;
    room.join().await.expect("joined");
    room
}

/// Polls `probe` every 100 ms until it yields a value; panics after 30 s.
pub async fn wait_for<T>(what: &str, mut probe: impl AsyncFnMut() -> Option<T>) -> T {
    for _ in 0..300 {
        if let Some(value) = probe().await {
            return value;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// The body of a room message that arrived encrypted and was decrypted; `None` while it
/// cannot be decrypted (or if it was never encrypted).
pub fn decrypted_body(event: &TimelineEvent) -> Option<String> {
    event.encryption_info()?;
    let content: serde_json::Value = event.raw().get_field("content").ok()??;
    content["body"].as_str().map(str::to_owned)
}

/// Fetches `event_id` in `room` and decrypts it with the keys this device has.
pub async fn fetch_decrypted(room: &Room, event_id: &matrix_sdk::ruma::EventId) -> Option<String> {
    decrypted_body(&room.event(event_id, None).await.expect("event fetched"))
}
