//! Configuration: a TOML file (or none), overridden by `PLEXUS_*` environment variables,
//! validated once at start so that a bad value stops the server with a clear message.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The domain part of every user and room ID of this server, e.g. `example.org`.
    pub server_name: String,
    /// Base URL clients use to reach the client API (served in `/.well-known/matrix/client`).
    /// Defaults to `http://{server_name}`.
    #[serde(default)]
    pub public_baseurl: Option<String>,
    /// Folder for the signing key and media.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub listen: ListenConfig,
    #[serde(default)]
    pub database: DatabaseConfig,
    #[serde(default)]
    pub registration: RegistrationConfig,
    #[serde(default)]
    pub rate_limits: RateLimitConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub metrics: MetricsConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    #[serde(default)]
    pub turn: TurnConfig,
    #[serde(default)]
    pub media: MediaConfig,
    #[serde(default)]
    pub federation: FederationConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub push: PushConfig,
    #[serde(default)]
    pub appservice: AppserviceConfig,
    /// Whether `m.login.password` logins are accepted (turn off when everyone signs in by SSO).
    #[serde(default = "default_true")]
    pub password_login_enabled: bool,
    #[serde(default)]
    pub sso: SsoConfig,
    /// Let a logged-in client make a login token for another device
    /// (`POST /_matrix/client/v1/login/get_token`, always behind user-interactive authentication).
    #[serde(default)]
    pub login_via_existing_session: bool,
    #[serde(default)]
    pub retention: RetentionConfig,
    #[serde(default)]
    pub user_directory: UserDirectoryConfig,
    #[serde(default)]
    pub presence: PresenceConfig,
}

/// Application services (bridges), see docs/appservices.md.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AppserviceConfig {
    /// Registration files (YAML, the format Synapse reads from `app_service_config_files`).
    pub config_files: Vec<PathBuf>,
    /// Wait before the first retry of an appservice that failed a transaction; doubled on
    /// each further failure.
    pub initial_backoff_ms: u64,
    /// Longest wait between retries.
    pub max_backoff_ms: u64,
}

impl Default for AppserviceConfig {
    fn default() -> Self {
        // Synapse retries appservices after 2^n seconds, up to about 8.5 minutes.
        Self { config_files: Vec::new(), initial_backoff_ms: 1000, max_backoff_ms: 512_000 }
    }
}

/// Single sign-on through OpenID Connect providers (see docs/sso.md).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SsoConfig {
    #[serde(default)]
    pub providers: Vec<OidcProviderConfig>,
    /// Prefixes of client `redirectUrl`s that get the login token by a direct redirect. Any other
    /// URL gets a page asking the user to confirm first, so that a link crafted by someone else
    /// cannot silently hand them the user's login. Empty by default.
    #[serde(default)]
    pub client_whitelist: Vec<String>,
}

/// One OpenID Connect provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProviderConfig {
    /// Identifier clients see in `identity_providers` and use in `/login/sso/redirect/{idpId}`.
    pub id: String,
    /// Name shown to users.
    pub name: String,
    /// The issuer, exactly as in the provider's discovery document.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    #[serde(default = "default_oidc_scopes")]
    pub scopes: Vec<String>,
    /// How the Matrix localpart is made from the claims (lowercased afterwards).
    #[serde(default = "default_localpart_template")]
    pub localpart_template: String,
    /// The display name of an account created at first login.
    #[serde(default = "default_display_name_template")]
    pub display_name_template: String,
    /// Let a login whose localpart is an existing account that no provider subject is linked to
    /// take that account (only for providers trusted to vouch for those users).
    #[serde(default)]
    pub allow_existing_users: bool,
}

/// The id of the provider configured by `PLEXUS_OIDC_*`.
pub const ENV_OIDC_PROVIDER_ID: &str = "oidc";

fn default_true() -> bool {
    true
}

fn default_oidc_scopes() -> Vec<String> {
    vec!["openid".into(), "profile".into()]
}

fn default_localpart_template() -> String {
    "{{ user.preferred_username }}".into()
}

fn default_display_name_template() -> String {
    "{{ user.name }}".into()
}

/// Server administration.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Localpart of the account that sends server notices (created when first needed);
    /// unset, `/_synapse/admin/v1/send_server_notice` is refused, as in Synapse.
    #[serde(default)]
    pub server_notices_localpart: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// Address of the client-server (and, without a separate listener, federation) HTTP listener.
    pub client: SocketAddr,
}

impl Default for ListenConfig {
    fn default() -> Self {
        Self { client: "127.0.0.1:8008".parse().expect("valid address") }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://PATH` (embedded) or `postgres://user@host/db`.
    pub url: String,
    /// Largest number of pooled connections.
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        Self { url: "sqlite://data/plexus.db".into(), max_connections: default_max_connections() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationMode {
    /// Anyone may register (UIA with `m.login.dummy`).
    Open,
    /// Registration needs a registration token (`m.login.registration_token`).
    Token,
    /// Only the CLI, the admin API and shared-secret registration create accounts.
    #[default]
    Closed,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RegistrationConfig {
    #[serde(default)]
    pub mode: RegistrationMode,
    /// Secret for shared-secret registration (`/_synapse/admin/v1/register`).
    #[serde(default)]
    pub shared_secret: Option<String>,
    /// Whether `POST /register?kind=guest` creates guest accounts.
    #[serde(default)]
    pub allow_guests: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Sustained requests per second allowed per client address for login and registration.
    pub per_second: f64,
    /// Requests allowed in a burst before the sustained rate applies.
    pub burst: f64,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self { enabled: true, per_second: 0.5, burst: 10.0 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter, e.g. `info` or `plexus=debug,info`.
    pub filter: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { filter: "info".into() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serve Prometheus metrics at `GET /metrics` on the client listener.
    pub enabled: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Largest accepted JSON request body, in bytes.
    pub max_request_bytes: usize,
    /// Most client connections open at once (0: the process's descriptor limit less 256).
    #[serde(default)]
    pub max_connections: usize,
    /// Most client connections open at once from one address (0: no limit, for a reverse
    /// proxy, through which every connection comes from one address).
    #[serde(default)]
    pub max_connections_per_ip: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self { max_request_bytes: 1024 * 1024, max_connections: 0, max_connections_per_ip: 0 }
    }
}

/// The TURN server clients use for calls (`GET /voip/turnServer`), with coturn's
/// `use-auth-secret` REST credentials. Without `uris` and `shared_secret`, clients get none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TurnConfig {
    /// `turn:` and `turns:` URIs of the TURN server.
    #[serde(default)]
    pub uris: Vec<String>,
    /// The secret shared with the TURN server (coturn's `static-auth-secret`).
    #[serde(default)]
    pub shared_secret: Option<String>,
    /// How long the credentials handed out stay valid, in seconds.
    #[serde(default = "default_turn_ttl")]
    pub ttl_seconds: u64,
}

impl Default for TurnConfig {
    fn default() -> Self {
        Self { uris: Vec::new(), shared_secret: None, ttl_seconds: default_turn_ttl() }
    }
}

/// One day, as Synapse's `turn_user_lifetime`.
fn default_turn_ttl() -> u64 {
    86_400
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MediaConfig {
    /// Largest accepted upload, in bytes (`m.upload.size`).
    pub max_upload_bytes: u64,
    /// Total bytes of media one user may have uploaded; none means no quota.
    pub user_quota_bytes: Option<u64>,
    /// Created (`/create`) but not yet uploaded media IDs one user may hold at once.
    pub max_pending_uploads: u32,
    /// Sustained uploads and media ID creations per second per user (when rate limits are on).
    pub upload_per_second: f64,
    /// Uploads allowed in a burst.
    pub upload_burst: f64,
    /// Milliseconds since the epoch: media uploaded before it stays reachable through the
    /// deprecated unauthenticated `/_matrix/media/v3` download and thumbnail endpoints.
    /// None: those endpoints serve nothing (every upload counts as after the freeze).
    pub legacy_cutover_ts: Option<i64>,
    /// Serve `GET /_matrix/client/v1/media/preview_url` (the server fetches URLs for clients).
    pub url_previews: bool,
    /// Address ranges a preview may fetch from even though they are private or denied.
    pub preview_ip_allowlist: Vec<ipnet::IpNet>,
    /// Address ranges previews never fetch from, on top of the private, loopback and
    /// link-local ones.
    pub preview_ip_denylist: Vec<ipnet::IpNet>,
    /// The thumbnail sizes made when an image is uploaded; every thumbnail request is served
    /// the closest of them (Synapse's `thumbnail_sizes`). Default: the spec's common sizes.
    pub thumbnail_sizes: Vec<crate::media::thumbnail::Target>,
}

impl Default for MediaConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 50 * 1024 * 1024,
            user_quota_bytes: None,
            max_pending_uploads: 5,
            upload_per_second: 2.0,
            upload_burst: 20.0,
            legacy_cutover_ts: None,
            url_previews: false,
            preview_ip_allowlist: Vec::new(),
            preview_ip_denylist: Vec::new(),
            thumbnail_sizes: crate::media::thumbnail::COMMON_SIZES.to_vec(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// Address:port of a TLS listener serving the whole API (federation and client) with
    /// `tls_cert` and `tls_key`. Without it, federation is served on the client listener
    /// (behind a reverse proxy that terminates TLS).
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// PEM certificate chain of the TLS listener.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of the TLS listener.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// PEM file of extra root certificates trusted for outbound federation requests.
    #[serde(default)]
    pub trusted_ca_file: Option<PathBuf>,
    /// Tests only: accept any certificate from other servers.
    #[serde(default)]
    pub insecure_skip_verify: bool,
    /// Tests only: speak plain HTTP to servers whose name is an IP literal.
    #[serde(default)]
    pub insecure_plain_http: bool,
    /// Servers asked for other servers' keys (`POST /_matrix/key/v2/query`) when those
    /// cannot be fetched directly.
    #[serde(default)]
    pub notary_servers: Vec<String>,
}

/// Delivery to push gateways.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PushConfig {
    /// Wait before the first retry of a gateway that failed; doubled on each further failure.
    pub initial_backoff_ms: u64,
    /// Longest wait between retries.
    pub max_backoff_ms: u64,
}

impl Default for PushConfig {
    fn default() -> Self {
        // Synapse's: 1 s doubling up to an hour.
        Self { initial_backoff_ms: 1000, max_backoff_ms: 3_600_000 }
    }
}

/// Message retention (Synapse's `retention` section, see docs/retention.md): rooms'
/// `m.room.retention` policies and a server default, bounded by the allowed range, applied
/// by purge jobs that delete expired events.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Off: policies are neither enforced when serving events nor purged.
    pub enabled: bool,
    /// The policy of rooms without an `m.room.retention` state event (or for the lifetimes
    /// theirs leaves out).
    pub default_policy: RetentionPolicyConfig,
    /// Lifetimes of rooms' policies are raised to at least this...
    pub allowed_lifetime_min: Option<Lifetime>,
    /// ...and lowered to at most this.
    pub allowed_lifetime_max: Option<Lifetime>,
    /// Each job purges, every `interval`, the rooms whose `max_lifetime` is in
    /// (`shortest_max_lifetime`, `longest_max_lifetime`]. None: one daily job for every room.
    pub purge_jobs: Vec<PurgeJobConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicyConfig {
    pub min_lifetime: Option<Lifetime>,
    pub max_lifetime: Option<Lifetime>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PurgeJobConfig {
    #[serde(default)]
    pub shortest_max_lifetime: Option<Lifetime>,
    #[serde(default)]
    pub longest_max_lifetime: Option<Lifetime>,
    pub interval: Lifetime,
}

impl RetentionConfig {
    /// The configured purge jobs, or Synapse's default: every room, once a day.
    pub fn jobs(&self) -> Vec<PurgeJobConfig> {
        if self.purge_jobs.is_empty() {
            let day = Lifetime(24 * 3_600_000);
            return vec![PurgeJobConfig { shortest_max_lifetime: None, longest_max_lifetime: None, interval: day }];
        }
        self.purge_jobs.clone()
    }
}

/// Presence (Synapse's `presence` section): when off, syncs and `PUT /presence` change
/// nothing, and no presence is sent or shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PresenceConfig {
    pub enabled: bool,
    /// A user online without activity for this long becomes `unavailable` (Synapse: 5 minutes).
    pub idle_after: Lifetime,
    /// A user whose syncs stopped this long ago, and who was not active since, becomes
    /// `offline` (Synapse: 30 seconds).
    pub offline_after: Lifetime,
    /// A remote user whose server said nothing of them for this long becomes `offline` here
    /// (Synapse's `FEDERATION_TIMEOUT`: 30 minutes). Our users who are not offline are sent
    /// again to the servers sharing their rooms every five sixths of it (Synapse: every 25
    /// minutes), so that those servers do not take them for gone.
    pub remote_offline_after: Lifetime,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            idle_after: Lifetime(5 * 60_000),
            offline_after: Lifetime(30_000),
            remote_offline_after: Lifetime(30 * 60_000),
        }
    }
}

/// A duration in milliseconds, written as a number of milliseconds or, as in Synapse's
/// config, a number with a unit: `500ms`, `30s`, `15m`, `12h`, `1d`, `1w`, `1y`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(into = "u64")]
pub struct Lifetime(pub u64);

impl From<Lifetime> for u64 {
    fn from(l: Lifetime) -> u64 {
        l.0
    }
}

impl std::str::FromStr for Lifetime {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (number, unit) = s.split_at(split);
        let number: u64 = number.parse().map_err(|_| format!("{s:?} is not a duration such as 30s, 12h or 7d"))?;
        let unit_ms: u64 = match unit {
            "" | "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 7 * 86_400_000,
            "y" => 365 * 86_400_000,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (ms, s, m, h, d, w or y)")),
        };
        number.checked_mul(unit_ms).map(Lifetime).ok_or_else(|| format!("{s:?} is too long"))
    }
}

impl<'de> Deserialize<'de> for Lifetime {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Millis(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Millis(ms) => Ok(Lifetime(ms)),
            Raw::Text(text) => text.parse().map_err(serde::de::Error::custom),
        }
    }
}

/// The user directory (`POST /user_directory/search`).
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct UserDirectoryConfig {
    /// Search every local user and every user of other servers seen in a room here. Off (as
    /// Synapse): only users who share a room with the searcher or are in a public room.
    pub search_all_users: bool,
}

/// The non-empty items of a comma-separated environment variable.
fn comma_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("data")
}

fn default_max_connections() -> u32 {
    16
}

/// The server name of a generated config and of `plexus serve` with nothing set.
pub const DEFAULT_SERVER_NAME: &str = "localhost:8008";

impl Config {
    /// A config with defaults for everything but the server name.
    pub fn with_server_name(server_name: &str) -> Self {
        Config {
            server_name: server_name.to_owned(),
            public_baseurl: None,
            data_dir: default_data_dir(),
            listen: ListenConfig::default(),
            database: DatabaseConfig::default(),
            registration: RegistrationConfig::default(),
            rate_limits: RateLimitConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            limits: LimitsConfig::default(),
            turn: TurnConfig::default(),
            media: MediaConfig::default(),
            federation: FederationConfig::default(),
            admin: AdminConfig::default(),
            push: PushConfig::default(),
            appservice: AppserviceConfig::default(),
            password_login_enabled: true,
            sso: SsoConfig::default(),
            login_via_existing_session: false,
            retention: RetentionConfig::default(),
            user_directory: UserDirectoryConfig::default(),
            presence: PresenceConfig::default(),
        }
    }

    /// Reads a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("cannot read config file {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
    }

    /// Loads the config for `serve` and the other commands: the file if given, else
    /// env-only when `PLEXUS_SERVER_NAME` is set, else `./plexus.toml`, generated on first run.
    pub fn load(file: Option<&Path>) -> anyhow::Result<Self> {
        Self::load_from(file, &|k| std::env::var(k).ok())
    }

    pub fn load_from(file: Option<&Path>, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<Self> {
        let mut config = match (file, env("PLEXUS_SERVER_NAME")) {
            (Some(path), _) => Self::from_file(path)?,
            (None, Some(name)) => Self::with_server_name(&name),
            (None, None) => {
                let path = Path::new("plexus.toml");
                if !path.exists() {
                    let generated = Self::generate(DEFAULT_SERVER_NAME);
                    std::fs::write(path, generated).context("cannot write ./plexus.toml")?;
                    eprintln!("generated ./plexus.toml for server name {DEFAULT_SERVER_NAME}");
                }
                Self::from_file(path)?
            }
        };
        config.apply_env(env)?;
        config.validate()?;
        Ok(config)
    }

    fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) -> anyhow::Result<()> {
        if let Some(v) = env("PLEXUS_SERVER_NAME") {
            self.server_name = v;
        }
        if let Some(v) = env("PLEXUS_PUBLIC_BASEURL") {
            self.public_baseurl = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = env("PLEXUS_LISTEN") {
            self.listen.client = v.parse().with_context(|| format!("PLEXUS_LISTEN: not an address:port: {v}"))?;
        }
        if let Some(v) = env("PLEXUS_DATABASE_URL") {
            self.database.url = v;
        }
        if let Some(v) = env("PLEXUS_DATA_DIR") {
            self.data_dir = v.into();
        }
        if let Some(v) = env("PLEXUS_REGISTRATION") {
            self.registration.mode = match v.as_str() {
                "open" => RegistrationMode::Open,
                "token" => RegistrationMode::Token,
                "closed" => RegistrationMode::Closed,
                _ => bail!("PLEXUS_REGISTRATION must be open, token or closed, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_REGISTRATION_SHARED_SECRET") {
            self.registration.shared_secret = Some(v).filter(|s| !s.is_empty());
        }
        if let Some(v) = env("PLEXUS_RATE_LIMITS") {
            self.rate_limits.enabled = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => bail!("PLEXUS_RATE_LIMITS must be on or off, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_PRESENCE") {
            self.presence.enabled = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => bail!("PLEXUS_PRESENCE must be on or off, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_LOG") {
            self.log.filter = v;
        }
        if let Some(v) = env("PLEXUS_METRICS") {
            self.metrics.enabled = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => bail!("PLEXUS_METRICS must be on or off, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_MAX_UPLOAD_BYTES") {
            self.media.max_upload_bytes =
                v.parse().with_context(|| format!("PLEXUS_MAX_UPLOAD_BYTES: not a number of bytes: {v}"))?;
        }
        if let Some(v) = env("PLEXUS_FEDERATION_LISTEN") {
            let addr = v.parse().with_context(|| format!("PLEXUS_FEDERATION_LISTEN: not an address:port: {v}"))?;
            self.federation.listen = Some(addr);
        }
        if let Some(v) = env("PLEXUS_TLS_CERT") {
            self.federation.tls_cert = Some(v.into());
        }
        if let Some(v) = env("PLEXUS_TLS_KEY") {
            self.federation.tls_key = Some(v.into());
        }
        if let Some(v) = env("PLEXUS_FEDERATION_CA") {
            self.federation.trusted_ca_file = Some(v.into());
        }
        if let Some(v) = env("PLEXUS_FEDERATION_INSECURE_TLS") {
            self.federation.insecure_skip_verify = match v.as_str() {
                "true" => true,
                "false" => false,
                _ => bail!("PLEXUS_FEDERATION_INSECURE_TLS must be true or false, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_PASSWORD_LOGIN") {
            self.password_login_enabled = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => bail!("PLEXUS_PASSWORD_LOGIN must be on or off, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_LOGIN_VIA_EXISTING_SESSION") {
            self.login_via_existing_session = match v.as_str() {
                "on" => true,
                "off" => false,
                _ => bail!("PLEXUS_LOGIN_VIA_EXISTING_SESSION must be on or off, not {v:?}"),
            };
        }
        if let Some(v) = env("PLEXUS_SSO_CLIENT_WHITELIST") {
            self.sso.client_whitelist = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(Into::into).collect();
        }
        let oidc = ["PLEXUS_OIDC_ISSUER", "PLEXUS_OIDC_CLIENT_ID", "PLEXUS_OIDC_CLIENT_SECRET"]
            .map(|k| env(k).filter(|v| !v.is_empty()));
        match oidc {
            [Some(issuer), Some(client_id), Some(client_secret)] => {
                self.sso.providers.retain(|p| p.id != ENV_OIDC_PROVIDER_ID);
                self.sso.providers.push(OidcProviderConfig {
                    id: ENV_OIDC_PROVIDER_ID.into(),
                    name: env("PLEXUS_OIDC_NAME").filter(|v| !v.is_empty()).unwrap_or_else(|| "OpenID Connect".into()),
                    issuer,
                    client_id,
                    client_secret,
                    scopes: default_oidc_scopes(),
                    localpart_template: default_localpart_template(),
                    display_name_template: default_display_name_template(),
                    allow_existing_users: false,
                });
            }
            [None, None, None] => {}
            _ => bail!("PLEXUS_OIDC_ISSUER, PLEXUS_OIDC_CLIENT_ID and PLEXUS_OIDC_CLIENT_SECRET go together"),
        }
        if let Some(v) = env("PLEXUS_FEDERATION_NOTARY_SERVERS") {
            self.federation.notary_servers = comma_list(&v).map(Into::into).collect();
        }
        if let Some(v) = env("PLEXUS_APPSERVICE_CONFIG_FILES") {
            self.appservice.config_files = comma_list(&v).map(Into::into).collect();
        }
        Ok(())
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        ruma::ServerName::parse(&self.server_name)
            .map_err(|e| anyhow::anyhow!("server_name {:?} is not a valid server name: {e}", self.server_name))?;
        if !(self.database.url.starts_with("sqlite:") || self.database.url.starts_with("postgres")) {
            bail!("database.url must start with sqlite:// or postgres://, not {:?}", self.database.url);
        }
        if let Some(url) = &self.public_baseurl {
            url::Url::parse(url).with_context(|| format!("public_baseurl {url:?} is not a URL"))?;
        }
        if self.rate_limits.enabled && (self.rate_limits.per_second <= 0.0 || self.rate_limits.burst < 1.0) {
            bail!("rate_limits.per_second must be > 0 and rate_limits.burst >= 1");
        }
        if self.database.max_connections == 0 {
            bail!("database.max_connections must be at least 1");
        }
        if let Some(uri) = self.turn.uris.iter().find(|u| !(u.starts_with("turn:") || u.starts_with("turns:"))) {
            bail!("turn.uris must be turn: or turns: URIs, not {uri:?}");
        }
        if self.turn.ttl_seconds == 0 {
            bail!("turn.ttl_seconds must be at least 1");
        }
        if self.rate_limits.enabled && (self.media.upload_per_second <= 0.0 || self.media.upload_burst < 1.0) {
            bail!("media.upload_per_second must be > 0 and media.upload_burst >= 1");
        }
        if self.media.thumbnail_sizes.is_empty() {
            bail!("media.thumbnail_sizes must list at least one size");
        }
        if let Some(t) = self
            .media
            .thumbnail_sizes
            .iter()
            .find(|t| !(1..=4096).contains(&t.width) || !(1..=4096).contains(&t.height))
        {
            bail!("media.thumbnail_sizes: {}x{} must be 1 to 4096 pixels a side", t.width, t.height);
        }
        let federation = &self.federation;
        if federation.listen.is_some() && (federation.tls_cert.is_none() || federation.tls_key.is_none()) {
            bail!("federation.listen needs federation.tls_cert and federation.tls_key");
        }
        for notary in &federation.notary_servers {
            ruma::ServerName::parse(notary)
                .map_err(|e| anyhow::anyhow!("federation.notary_servers: {notary:?} is not a server name: {e}"))?;
        }
        let presence = &self.presence;
        if [presence.offline_after, presence.idle_after, presence.remote_offline_after].iter().any(|l| l.0 < 600) {
            bail!(
                "presence.offline_after, presence.idle_after and presence.remote_offline_after must be at least 600ms"
            );
        }
        self.validate_retention()?;
        self.validate_sso()
    }

    fn validate_retention(&self) -> anyhow::Result<()> {
        let r = &self.retention;
        if let (Some(min), Some(max)) = (r.allowed_lifetime_min, r.allowed_lifetime_max)
            && min > max
        {
            bail!("retention.allowed_lifetime_min must not be greater than retention.allowed_lifetime_max");
        }
        if let (Some(min), Some(max)) = (r.default_policy.min_lifetime, r.default_policy.max_lifetime)
            && min > max
        {
            bail!("retention.default_policy: min_lifetime must not be greater than max_lifetime");
        }
        for job in &r.purge_jobs {
            if job.interval.0 == 0 {
                bail!("retention.purge_jobs: interval must be longer than 0");
            }
            if let (Some(short), Some(long)) = (job.shortest_max_lifetime, job.longest_max_lifetime)
                && short > long
            {
                bail!("retention.purge_jobs: shortest_max_lifetime must not be greater than longest_max_lifetime");
            }
        }
        Ok(())
    }

    fn validate_sso(&self) -> anyhow::Result<()> {
        let mut seen = std::collections::HashSet::new();
        for p in &self.sso.providers {
            // The spec's grammar for identity provider IDs.
            let id_ok = !p.id.is_empty()
                && p.id.len() <= 255
                && p.id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'~' | b'-'));
            if !id_ok {
                bail!("sso.providers: id {:?} must be 1 to 255 characters from A-Z a-z 0-9 . _ ~ -", p.id);
            }
            if !seen.insert(p.id.as_str()) {
                bail!("sso.providers: id {:?} is used twice", p.id);
            }
            url::Url::parse(&p.issuer)
                .with_context(|| format!("sso.providers {}: issuer {:?} is not a URL", p.id, p.issuer))?;
            if !p.scopes.iter().any(|s| s == "openid") {
                bail!("sso.providers {}: scopes must include openid", p.id);
            }
            for template in [&p.localpart_template, &p.display_name_template] {
                crate::sso::template::Template::parse(template)
                    .map_err(|e| anyhow::anyhow!("sso.providers {}: template {template:?}: {e}", p.id))?;
            }
        }
        Ok(())
    }

    /// The base URL clients are told to use.
    pub fn base_url(&self) -> String {
        let url = self.public_baseurl.clone().unwrap_or_else(|| format!("http://{}", self.server_name));
        url.trim_end_matches('/').to_owned()
    }

    /// A commented config file for `generate-config`.
    pub fn generate(server_name: &str) -> String {
        let secret: String = {
            use rand::Rng;
            let bytes: [u8; 24] = rand::thread_rng().r#gen();
            hex::encode(bytes)
        };
        include_str!("../config/plexus.example.toml")
            .replace("server_name = \"example.org\"", &format!("server_name = {server_name:?}"))
            .replace("# shared_secret = \"CHANGE-ME\"", &format!("shared_secret = {secret:?}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn env_only_config() {
        let env = env_of(&[
            ("PLEXUS_SERVER_NAME", "127.0.0.1:8480"),
            ("PLEXUS_LISTEN", "127.0.0.1:8480"),
            ("PLEXUS_DATABASE_URL", "sqlite:///tmp/x.db"),
            ("PLEXUS_REGISTRATION", "open"),
            ("PLEXUS_RATE_LIMITS", "off"),
        ]);
        let c = Config::load_from(None, &env).unwrap();
        assert_eq!(c.server_name, "127.0.0.1:8480");
        assert_eq!(c.registration.mode, RegistrationMode::Open);
        assert!(!c.rate_limits.enabled);
        assert_eq!(c.base_url(), "http://127.0.0.1:8480");
    }

    #[test]
    fn bad_values_are_refused() {
        let env = env_of(&[("PLEXUS_SERVER_NAME", "bad name!")]);
        assert!(Config::load_from(None, &env).is_err());
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_REGISTRATION", "maybe")]);
        assert!(Config::load_from(None, &env).is_err());
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_LISTEN", "nowhere")]);
        assert!(Config::load_from(None, &env).is_err());
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_PUBLIC_BASEURL", "not a url")]);
        assert!(Config::load_from(None, &env).is_err());
    }

    #[test]
    fn empty_optional_variables_mean_unset() {
        // docker compose passes `${VAR:-}` as an empty string.
        let env = env_of(&[
            ("PLEXUS_SERVER_NAME", "ok.org"),
            ("PLEXUS_PUBLIC_BASEURL", ""),
            ("PLEXUS_REGISTRATION_SHARED_SECRET", ""),
        ]);
        let c = Config::load_from(None, &env).unwrap();
        assert_eq!(c.base_url(), "http://ok.org");
        assert!(c.registration.shared_secret.is_none());
    }

    #[test]
    fn media_upload_limit_from_env() {
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_MAX_UPLOAD_BYTES", "1000")]);
        assert_eq!(Config::load_from(None, &env).unwrap().media.max_upload_bytes, 1000);
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_MAX_UPLOAD_BYTES", "lots")]);
        assert!(Config::load_from(None, &env).is_err());
    }

    #[test]
    fn generated_config_parses() {
        let text = Config::generate("chat.example.com");
        let c: Config = toml::from_str(&text).unwrap();
        assert_eq!(c.server_name, "chat.example.com");
        assert!(c.registration.shared_secret.is_some());
        assert_eq!(c.media.thumbnail_sizes, crate::media::thumbnail::COMMON_SIZES);
        c.validate().unwrap();
    }

    #[test]
    fn thumbnail_sizes_are_checked() {
        let mut c = Config::with_server_name("ok.org");
        c.media.thumbnail_sizes.clear();
        assert!(c.validate().is_err());
        let text = "[[thumbnail_sizes]]\nwidth = 0\nheight = 10\nmethod = \"crop\"\n";
        c.media = toml::from_str(text).unwrap();
        assert!(c.validate().is_err());
        assert!(toml::from_str::<MediaConfig>(&text.replace("crop", "stretch")).is_err());
        c.media.thumbnail_sizes[0].width = 10;
        c.validate().unwrap();
    }

    #[test]
    fn federation_settings_from_the_environment() {
        let env = env_of(&[
            ("PLEXUS_SERVER_NAME", "127.0.0.1:18143"),
            ("PLEXUS_FEDERATION_LISTEN", "127.0.0.1:18143"),
            ("PLEXUS_TLS_CERT", "/tmp/cert.pem"),
            ("PLEXUS_TLS_KEY", "/tmp/key.pem"),
            ("PLEXUS_FEDERATION_CA", "/tmp/ca.pem"),
            ("PLEXUS_FEDERATION_INSECURE_TLS", "true"),
            ("PLEXUS_FEDERATION_NOTARY_SERVERS", "matrix.org, example.com:8448"),
        ]);
        let c = Config::load_from(None, &env).unwrap();
        let f = &c.federation;
        assert_eq!(f.listen, Some("127.0.0.1:18143".parse().unwrap()));
        assert_eq!(f.tls_cert.as_deref(), Some(Path::new("/tmp/cert.pem")));
        assert_eq!(f.tls_key.as_deref(), Some(Path::new("/tmp/key.pem")));
        assert_eq!(f.trusted_ca_file.as_deref(), Some(Path::new("/tmp/ca.pem")));
        assert!(f.insecure_skip_verify && !f.insecure_plain_http);
        assert_eq!(f.notary_servers, ["matrix.org", "example.com:8448"]);

        // A listener needs its certificate and key; notaries must be server names.
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_FEDERATION_LISTEN", "127.0.0.1:8448")]);
        assert!(Config::load_from(None, &env).is_err());
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_FEDERATION_NOTARY_SERVERS", "bad name")]);
        assert!(Config::load_from(None, &env).is_err());
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_FEDERATION_INSECURE_TLS", "yes")]);
        assert!(Config::load_from(None, &env).is_err());
    }

    #[test]
    fn appservice_files_from_the_environment() {
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_APPSERVICE_CONFIG_FILES", "/a.yaml, ,/b.yaml")]);
        let c = Config::load_from(None, &env).unwrap();
        assert_eq!(c.appservice.config_files, [Path::new("/a.yaml"), Path::new("/b.yaml")]);
    }

    #[test]
    fn retention_durations_and_bounds() {
        let text = r#"
            server_name = "ok.org"
            [retention]
            enabled = true
            default_policy = { max_lifetime = "1y" }
            allowed_lifetime_min = 86400000
            allowed_lifetime_max = "2w"
            [[retention.purge_jobs]]
            longest_max_lifetime = "3d"
            interval = "12h"
            [[retention.purge_jobs]]
            shortest_max_lifetime = "3d"
            interval = "500ms"
        "#;
        let c: Config = toml::from_str(text).unwrap();
        c.validate().unwrap();
        let r = &c.retention;
        assert_eq!(r.default_policy.max_lifetime, Some(Lifetime(365 * 86_400_000)));
        assert_eq!(
            (r.allowed_lifetime_min, r.allowed_lifetime_max),
            (Some(Lifetime(86_400_000)), Some(Lifetime(14 * 86_400_000)))
        );
        assert_eq!(r.jobs()[0].interval, Lifetime(12 * 3_600_000));
        assert_eq!(r.jobs()[1].interval, Lifetime(500));
        assert_eq!(RetentionConfig::default().jobs().len(), 1, "one daily job by default");
        for bad in ["3 days", "1x", "d", "-1d"] {
            assert!(bad.parse::<Lifetime>().is_err(), "{bad}");
        }
        let mut c = Config::with_server_name("ok.org");
        c.retention.allowed_lifetime_min = Some(Lifetime(2));
        c.retention.allowed_lifetime_max = Some(Lifetime(1));
        assert!(c.validate().is_err());
    }

    #[test]
    fn sso_settings_from_the_environment() {
        let env = env_of(&[
            ("PLEXUS_SERVER_NAME", "ok.org"),
            ("PLEXUS_OIDC_ISSUER", "http://127.0.0.1:18650"),
            ("PLEXUS_OIDC_CLIENT_ID", "plexus"),
            ("PLEXUS_OIDC_CLIENT_SECRET", "s"),
            ("PLEXUS_PASSWORD_LOGIN", "off"),
            ("PLEXUS_SSO_CLIENT_WHITELIST", "https://app.example/, io.element:/"),
        ]);
        let c = Config::load_from(None, &env).unwrap();
        let p = &c.sso.providers[0];
        assert_eq!(
            (p.id.as_str(), p.issuer.as_str(), p.client_id.as_str()),
            ("oidc", "http://127.0.0.1:18650", "plexus")
        );
        assert_eq!(p.scopes, ["openid", "profile"]);
        assert!(!c.password_login_enabled);
        assert_eq!(c.sso.client_whitelist, ["https://app.example/", "io.element:/"]);

        // All three or none; a template must parse.
        let env = env_of(&[("PLEXUS_SERVER_NAME", "ok.org"), ("PLEXUS_OIDC_ISSUER", "http://127.0.0.1:1")]);
        assert!(Config::load_from(None, &env).is_err());
        let mut c = Config::with_server_name("ok.org");
        c.sso.providers.push(p.clone());
        c.validate().unwrap();
        c.sso.providers[0].localpart_template = "{{ preferred_username }}".into();
        assert!(c.validate().is_err());
        c.sso.providers[0].localpart_template = "{{ user.preferred_username }}".into();
        c.sso.providers[0].id = "bad id".into();
        assert!(c.validate().is_err());
    }
}
