//! Plexus, a Matrix homeserver.
//!
//! Layering: `api` (HTTP handlers, thin) -> services (`accounts`, ...) -> `storage` (all SQL).

pub mod accounts;
pub mod admin;
pub mod api;
pub mod appservice;
pub mod cluster;
pub mod config;
pub mod crypto;
pub mod directory;
pub mod e2ee;
pub mod error;
pub mod federation;
pub mod http;
pub mod media;
pub mod outbox;
pub mod push;
pub mod rooms;
pub mod sso;
pub mod storage;
pub mod sync;

use std::future::Future;
use std::net::SocketAddr;
use std::ops::Deref;
use std::sync::{Arc, OnceLock};

use anyhow::Context;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;

use crate::accounts::uia::UiaSessions;
use crate::config::Config;
use crate::crypto::keys::ServerKey;
use crate::http::rate_limit::RateLimiter;
use crate::storage::Db;
use crate::sync::notifier::Notifier;

/// Everything a request handler may use, built once from the config.
pub struct Services {
    pub config: Config,
    pub db: Db,
    pub server_key: ServerKey,
    pub uia: UiaSessions,
    pub sessions: accounts::sessions::SessionTracker,
    pub token_cache: accounts::token_cache::TokenCache,
    pub key_status: e2ee::keys::KeyStatusCache,
    pub rate_limiter: RateLimiter,
    pub metrics: Option<PrometheusHandle>,
    pub notifier: Notifier,
    pub rooms: rooms::Rooms,
    pub typing: rooms::typing::Typing,
    pub lazy_load: sync::v2::LazyLoadCache,
    pub filters: sync::filter::Uploaded,
    pub sliding_rooms: sync::sliding::lists::RoomListCache,
    pub to_device_none_waiting: e2ee::to_device::NoneWaiting,
    pub push: push::Push,
    pub presence: accounts::presence::Tracker,
    pub media: media::MediaService,
    pub federation: federation::Federation,
    pub room_deletions: admin::rooms::Deletions,
    pub history_purges: admin::purge::Purges,
    pub erased_users: rooms::visibility::ErasedUsers,
    pub appservices: appservice::Appservices,
    pub sso: sso::Sso,
    /// The other processes of the database (none on SQLite).
    pub cluster: cluster::Cluster,
}

/// Shared state of the HTTP handlers.
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

impl AppState {
    /// Opens the database (applying migrations) and loads or creates the signing key.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let db = Db::connect(&config.database.url, config.database.max_connections).await?;
        let server_key = ServerKey::load_or_generate(&config.data_dir)?;
        let metrics = config.metrics.enabled.then(prometheus_handle).transpose()?;
        let appservices = appservice::Appservices::load(&config)?;
        appservice::create_senders(&db, &appservices).await?;
        let cluster = cluster::Cluster::new(&db, &config.database.url);
        let typing = rooms::typing::Typing::load(&db).await?;
        let state = AppState(Arc::new(Services {
            sessions: accounts::sessions::SessionTracker::new(cluster.publisher()),
            token_cache: accounts::token_cache::TokenCache::new(cluster.publisher()),
            key_status: e2ee::keys::KeyStatusCache::new(cluster.publisher()),
            rate_limiter: RateLimiter::shared(config.rate_limits.clone(), &db),
            uia: UiaSessions,
            notifier: Notifier::new(cluster.publisher()),
            rooms: rooms::Rooms::default(),
            typing,
            lazy_load: sync::v2::LazyLoadCache::default(),
            filters: Default::default(),
            sliding_rooms: Default::default(),
            to_device_none_waiting: Default::default(),
            push: push::Push::default(),
            presence: accounts::presence::Tracker::new(&config.presence),
            media: media::MediaService::new(&config)?,
            federation: federation::Federation::new(&config)?,
            room_deletions: Default::default(),
            history_purges: Default::default(),
            erased_users: rooms::visibility::ErasedUsers::load(&db).await?,
            appservices,
            sso: sso::Sso::new(&config)?,
            cluster,
            config,
            db,
            server_key,
            metrics,
        }));
        state.cluster.start(Arc::downgrade(&state.0), state.db.clone());
        tokio::spawn(federation::sender::run(Arc::downgrade(&state.0)));
        tokio::spawn(outbox::run::<push::gateway::PusherId>(Arc::downgrade(&state.0)));
        tokio::spawn(outbox::run::<appservice::AppserviceId>(Arc::downgrade(&state.0)));
        tokio::spawn(sso::Sso::preload(Arc::downgrade(&state.0)));
        tokio::spawn(rooms::retention::run(Arc::downgrade(&state.0)));
        tokio::spawn(media::make_thumbnails(Arc::downgrade(&state.0)));
        tokio::spawn(media::housekeeping(Arc::downgrade(&state.0)));
        tokio::spawn(accounts::presence::run(Arc::downgrade(&state.0)));
        tokio::spawn(admin::rooms::resume_interrupted(Arc::downgrade(&state.0)));
        Ok(state)
    }
}

/// The process-wide Prometheus recorder (metrics macros report to one global recorder).
fn prometheus_handle() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    if let Some(h) = HANDLE.get() {
        return Ok(h.clone());
    }
    let handle = PrometheusBuilder::new().install_recorder().context("cannot install the metrics recorder")?;
    Ok(HANDLE.get_or_init(|| handle).clone())
}

/// How long requests still running get to finish once shutdown is asked for.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(1);

/// Serves the HTTP API on `listener` until `shutdown` completes.
pub async fn run(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use axum::serve::ListenerExt;
    let shutdown = stopping(&state, shutdown);
    // `tap_io` does nothing but makes `ConnectInfo<SocketAddr>` available (axum provides it
    // for `TapIo` over any listener, and for no other listener but its own).
    let listener = http::connections::LimitedListener::new(listener, &state.config.limits).tap_io(|_| {});
    let app = http::router(state).into_make_service_with_connect_info::<SocketAddr>();
    let serve = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone()).into_future();
    within_grace(serve, shutdown).await.context("HTTP server failed")
}

/// `shutdown`, after which long-polls answer at once (they would hold the graceful
/// shutdown for their whole timeout).
pub(crate) fn stopping(
    state: &AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> futures::future::Shared<futures::future::BoxFuture<'static, ()>> {
    use futures::FutureExt;
    let state = state.clone();
    async move {
        shutdown.await;
        state.notifier.shut_down();
    }
    .boxed()
    .shared()
}

/// Runs a server with graceful shutdown; once `shutdown` completes, requests still running
/// get `SHUTDOWN_GRACE` before they are dropped. What they committed stays committed (an
/// open transaction is rolled back), and their clients retry.
pub(crate) async fn within_grace(
    serve: impl Future<Output = std::io::Result<()>>,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    tokio::select! {
        done = serve => done,
        () = async {
            shutdown.await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!("requests still running after the shutdown grace are dropped");
            Ok(())
        }
    }
}
