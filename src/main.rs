//! The `plexus` command: serve, generate-config, register-user, registration-token, version.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use plexus::config::{Config, DEFAULT_SERVER_NAME};

#[derive(Parser)]
#[command(name = "plexus", about = "Plexus, a Matrix homeserver", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the homeserver. Without -c: PLEXUS_* variables if PLEXUS_SERVER_NAME is set,
    /// else ./plexus.toml (generated on first run).
    Serve {
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Print a commented config file for a server name.
    GenerateConfig {
        #[arg(long, default_value = DEFAULT_SERVER_NAME)]
        server_name: String,
    },
    /// Create an account directly in the database (e.g. the first admin).
    RegisterUser {
        /// Localpart of the new user (`alice` for @alice:SERVER).
        name: String,
        #[arg(long)]
        admin: bool,
        /// File holding the password (else the PLEXUS_PASSWORD variable, else read from stdin).
        #[arg(long)]
        password_file: Option<PathBuf>,
        #[arg(short, long)]
        config: Option<PathBuf>,
    },
    /// Manage registration tokens (for `registration.mode = "token"`).
    RegistrationToken {
        #[command(subcommand)]
        action: TokenAction,
        #[arg(short, long, global = true)]
        config: Option<PathBuf>,
    },
    /// Print the version.
    Version,
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create a token (random unless given) and print it.
    Create {
        /// How many registrations may use it (unlimited without).
        #[arg(long)]
        uses: Option<u32>,
        /// Days until it expires (never without).
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// The token: 1 to 64 characters from A-Z a-z 0-9 - . _ ~
        token: Option<String>,
    },
    /// List the tokens with their uses and expiry.
    List,
    /// Delete a token.
    Delete { token: String },
}

fn main() -> ExitCode {
    pin_mmap_threshold();
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes on one line, without a backtrace: a message for people.
            eprintln!("plexus: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Version => {
            println!("plexus {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::GenerateConfig { server_name } => {
            ruma::ServerName::parse(&server_name).map_err(|e| anyhow::anyhow!("invalid server name: {e}"))?;
            print!("{}", Config::generate(&server_name));
            Ok(())
        }
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            init_tracing(&config.log.filter)?;
            runtime()?.block_on(serve(config))
        }
        Command::RegisterUser { name, admin, password_file, config } => {
            let config = Config::load(config.as_deref())?;
            let password = read_password(password_file)?;
            runtime()?.block_on(register_user(config, &name, &password, admin))
        }
        Command::RegistrationToken { action, config } => {
            let config = Config::load(config.as_deref())?;
            runtime()?.block_on(registration_token(config, action))
        }
    }
}

/// Large blocks (argon2id's 19 MiB per password hash) go straight to mmap and back to the
/// system when freed. glibc otherwise raises its mmap threshold after the first such block
/// is freed and serves the next ones from a heap it never shrinks: RSS grew by about 13 MiB
/// per registration or login (1.4 GiB after 100), see docs/benchmarks.md "Memory".
fn pin_mmap_threshold() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start the async runtime")
}

fn init_tracing(filter: &str) -> anyhow::Result<()> {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).with_context(|| format!("invalid log filter {filter:?}"))?;
    tracing_subscriber::fmt().with_env_filter(filter).init();
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    use futures::FutureExt;
    let addr = config.listen.client;
    let state = plexus::AppState::build(config).await?;
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(server_name = %state.config.server_name, %addr, "Plexus is listening");
    let shutdown = shutdown_signal().shared();
    let federation = &state.config.federation;
    let tls_listener = match (federation.listen, &federation.tls_cert, &federation.tls_key) {
        (Some(addr), Some(cert), Some(key)) => {
            let tls = plexus::federation::tls::server_config(cert, key)?;
            let listener =
                tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on {addr}"))?;
            tracing::info!(%addr, "Plexus is listening with TLS");
            Some(plexus::federation::listener::serve_tls(state.clone(), listener, tls, shutdown.clone()))
        }
        _ => None,
    };
    match tls_listener {
        Some(tls_listener) => tokio::try_join!(plexus::run(state, listener, shutdown), tls_listener).map(|_| ()),
        None => plexus::run(state, listener, shutdown).await,
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! { _ = ctrl_c => {}, _ = term => {} }
    tracing::info!("shutting down");
}

fn read_password(file: Option<PathBuf>) -> anyhow::Result<String> {
    let text = if let Some(path) = file {
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?
    } else if let Ok(p) = std::env::var("PLEXUS_PASSWORD") {
        p
    } else {
        eprint!("Password: ");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).context("cannot read the password")?;
        line
    };
    let password = text.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        bail!("the password is empty");
    }
    Ok(password)
}

async fn register_user(config: Config, name: &str, password: &str, admin: bool) -> anyhow::Result<()> {
    let user_id =
        plexus::accounts::validate_new_localpart(name, &config.server_name).map_err(|e| anyhow::anyhow!("{e}"))?;
    let db = plexus::storage::Db::connect(&config.database.url, 1).await?;
    plexus::accounts::create_account(&db, &user_id, Some(password), admin, false, None)
        .await
        .map_err(|e| anyhow::anyhow!("cannot create {user_id}: {e}"))?;
    println!("created {user_id}{}", if admin { " (admin)" } else { "" });
    Ok(())
}

async fn registration_token(config: Config, action: TokenAction) -> anyhow::Result<()> {
    use plexus::storage::registration_tokens;
    let db = plexus::storage::Db::connect(&config.database.url, 1).await?;
    match action {
        TokenAction::Create { uses, expires_in_days, token } => {
            let token = token.unwrap_or_else(|| plexus::accounts::random_registration_token(16));
            plexus::accounts::validate_registration_token(&token).map_err(|e| anyhow::anyhow!("{e}"))?;
            let expiry_ts = expires_in_days.map(|d| plexus::storage::now_ms() + i64::from(d) * MS_PER_DAY);
            let mut tx = db.begin().await?;
            if !registration_tokens::create(&mut tx, &token, uses.map(i64::from), expiry_ts).await? {
                bail!("the registration token {token} exists already");
            }
            tx.commit().await?;
            println!("{token}");
        }
        TokenAction::List => {
            let now = plexus::storage::now_ms();
            for t in registration_tokens::list(&db).await? {
                let uses = match t.uses_allowed {
                    Some(n) => format!("{}/{n} uses", t.completed),
                    None => format!("{} uses (unlimited)", t.completed),
                };
                let expiry = match t.expiry_ts {
                    None => "never expires".to_owned(),
                    Some(ts) if ts <= now => "expired".to_owned(),
                    Some(ts) => format!("expires in {:.1} days", (ts - now) as f64 / MS_PER_DAY as f64),
                };
                let state = if t.is_valid() { "valid" } else { "invalid" };
                println!("{}\t{uses}\t{expiry}\t{state}", t.token);
            }
        }
        TokenAction::Delete { token } => {
            let mut tx = db.begin().await?;
            if !registration_tokens::delete(&mut tx, &token).await? {
                bail!("no registration token {token}");
            }
            tx.commit().await?;
            println!("deleted {token}");
        }
    }
    Ok(())
}

const MS_PER_DAY: i64 = 24 * 3600 * 1000;
