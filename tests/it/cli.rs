//! The `plexus` binary itself: `register-user`, `registration-token`, `version`, and `serve`
//! started only from PLEXUS_* variables or, with none, from a generated ./plexus.toml.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use plexus::storage::{self, Db};

/// The binary with a clean environment: only what a test sets reaches it.
fn plexus(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_plexus"));
    cmd.env_clear().current_dir(dir).stdin(Stdio::null());
    cmd
}

/// The binary pointed at a SQLite database in `dir` through PLEXUS_* variables.
fn plexus_on(dir: &Path) -> Command {
    let mut cmd = plexus(dir);
    cmd.env("PLEXUS_SERVER_NAME", "cli.test")
        .env("PLEXUS_DATABASE_URL", format!("sqlite://{}/plexus.db", dir.display()))
        .env("PLEXUS_DATA_DIR", dir);
    cmd
}

fn run(cmd: &mut Command) -> Output {
    cmd.output().expect("plexus runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[track_caller]
fn succeeded(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}{}", stdout(o), stderr(o));
    stdout(o)
}

#[track_caller]
fn failed(o: &Output) -> String {
    assert!(!o.status.success(), "succeeded: {}", stdout(o));
    stderr(o)
}

async fn open_db(dir: &Path) -> Db {
    Db::connect(&format!("sqlite://{}/plexus.db", dir.display()), 1).await.expect("database opens")
}

#[tokio::test]
async fn register_user() {
    let dir = tempfile::tempdir().unwrap();
    let password_file = dir.path().join("password");
    std::fs::write(&password_file, "s3cret\n").unwrap();
    let o =
        run(plexus_on(dir.path()).args(["register-user", "alice", "--admin", "--password-file"]).arg(&password_file));
    assert_eq!(succeeded(&o).trim(), "created @alice:cli.test (admin)");
    let o = run(plexus_on(dir.path()).args(["register-user", "bob"]).env("PLEXUS_PASSWORD", "bobpw"));
    assert_eq!(succeeded(&o).trim(), "created @bob:cli.test");

    let o = run(plexus_on(dir.path()).args(["register-user", "alice"]).env("PLEXUS_PASSWORD", "x"));
    assert!(failed(&o).contains("already taken"), "{}", stderr(&o));
    let o = run(plexus_on(dir.path()).args(["register-user", "Not Valid"]).env("PLEXUS_PASSWORD", "x"));
    failed(&o);
    let o = run(plexus_on(dir.path()).args(["register-user", "carol"]).env("PLEXUS_PASSWORD", ""));
    assert!(failed(&o).contains("empty"), "{}", stderr(&o));

    let db = open_db(dir.path()).await;
    let alice = ruma::user_id!("@alice:cli.test");
    assert!(storage::users::get(&db, alice.as_str()).await.unwrap().expect("alice").is_admin);
    assert!(plexus::accounts::check_password(&db, alice, "s3cret").await.unwrap());
    assert!(!plexus::accounts::check_password(&db, alice, "s3cret\n").await.unwrap());
    let bob = storage::users::get(&db, "@bob:cli.test").await.unwrap().expect("bob");
    assert!(!bob.is_admin);
    assert!(storage::users::get(&db, "@carol:cli.test").await.unwrap().is_none());
}

#[tokio::test]
async fn registration_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let token = |args: &[&str]| run(plexus_on(dir.path()).arg("registration-token").args(args));

    let o = token(&["create", "--uses", "2", "--expires-in-days", "7", "invite-2024"]);
    assert_eq!(succeeded(&o).trim(), "invite-2024");
    let random = succeeded(&token(&["create"])).trim().to_owned();
    assert_eq!(random.len(), 16, "{random}");
    assert!(random.bytes().all(|b| b.is_ascii_alphanumeric()), "{random}");
    assert!(failed(&token(&["create", "invite-2024"])).contains("exists already"));
    failed(&token(&["create", "has space"]));
    failed(&token(&["create", &"x".repeat(65)]));
    failed(&token(&["create", "--uses", "lots"]));

    let list = succeeded(&token(&["list"]));
    let line = list.lines().find(|l| l.starts_with("invite-2024\t")).expect("listed");
    assert!(line.contains("0/2 uses") && line.contains("expires in") && line.ends_with("valid"), "{line}");
    assert!(list.lines().any(|l| l.starts_with(&format!("{random}\t")) && l.contains("never expires")), "{list}");

    let db = open_db(dir.path()).await;
    let stored = storage::registration_tokens::get(&db, "invite-2024").await.unwrap().expect("stored");
    assert_eq!(stored.uses_allowed, Some(2));
    let days = (stored.expiry_ts.expect("expiry") - storage::now_ms()) as f64 / 86_400_000.0;
    assert!((6.9..=7.0).contains(&days), "{days}");
    assert!(stored.is_valid());

    assert_eq!(succeeded(&token(&["delete", "invite-2024"])).trim(), "deleted invite-2024");
    assert!(failed(&token(&["delete", "invite-2024"])).contains("no registration token"));
    assert!(!succeeded(&token(&["list"])).contains("invite-2024"));
}

#[test]
fn version() {
    let dir = tempfile::tempdir().unwrap();
    let o = run(plexus(dir.path()).arg("version"));
    assert_eq!(succeeded(&o).trim(), format!("plexus {}", env!("CARGO_PKG_VERSION")));
}

/// A server process, killed when dropped (also when the test fails).
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Waits until the server answers `/versions`.
async fn wait_until_up(server: &mut Running, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = format!("http://127.0.0.1:{port}/_matrix/client/versions");
    loop {
        if let Ok(resp) = reqwest::get(&url).await
            && resp.status() == 200
        {
            let body: serde_json::Value = resp.json().await.unwrap();
            assert!(body["versions"].is_array(), "{body}");
            return;
        }
        if let Some(status) = server.0.try_wait().unwrap() {
            panic!("plexus serve exited with {status}");
        }
        assert!(Instant::now() < deadline, "plexus serve did not answer on port {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn well_known_server_name(port: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{port}/.well-known/matrix/server");
    reqwest::get(&url).await.unwrap().json::<serde_json::Value>().await.unwrap()["m.server"].clone()
}

/// The acceptance harness's contract: no config file, only PLEXUS_* variables.
#[tokio::test]
async fn serve_from_environment_only() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = plexus_on(dir.path())
        .arg("serve")
        .env("PLEXUS_SERVER_NAME", format!("127.0.0.1:{port}"))
        .env("PLEXUS_LISTEN", format!("127.0.0.1:{port}"))
        .env("PLEXUS_REGISTRATION", "open")
        .env("PLEXUS_REGISTRATION_SHARED_SECRET", "0123abcd")
        .env("PLEXUS_RATE_LIMITS", "off")
        .env("PLEXUS_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Running(child);
    wait_until_up(&mut server, port).await;
    assert_eq!(well_known_server_name(port).await, serde_json::json!(format!("127.0.0.1:{port}")));
    assert!(!dir.path().join("plexus.toml").exists(), "no config file is written");
    assert!(dir.path().join("signing.key").exists());
    assert!(dir.path().join("plexus.db").exists());
}

/// The README's first run: no variables and no file; ./plexus.toml is generated for
/// localhost:8008 with SQLite under ./data (the listener is moved off 8008 for the test).
#[tokio::test]
async fn serve_first_run_generates_config() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = plexus(dir.path())
        .arg("serve")
        .env("PLEXUS_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut server = Running(child);
    wait_until_up(&mut server, port).await;
    assert_eq!(well_known_server_name(port).await, serde_json::json!("localhost:8008"));
    let config = std::fs::read_to_string(dir.path().join("plexus.toml")).expect("generated config");
    assert!(config.contains("server_name = \"localhost:8008\""), "{config}");
    assert!(dir.path().join("data/plexus.db").exists());
    assert!(dir.path().join("data/signing.key").exists());
    drop(server);

    // A bad config stops the start with a clear message.
    std::fs::write(dir.path().join("plexus.toml"), "server_name = \"localhost:8008\"\nbogus_key = 1\n").unwrap();
    let o = run(plexus(dir.path()).arg("serve"));
    let message = failed(&o);
    assert!(message.contains("plexus.toml") && message.contains("bogus_key"), "{message}");
}
