//! The `plexus` command: serve, generate-config, register-user, version.

use std::path::PathBuf;

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
    /// Print the version.
    Version,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
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
