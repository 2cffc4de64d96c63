//! Server discovery (spec: Server-Server API, "Resolving server names"): from a server name
//! to the addresses and port to connect to, the name the TLS certificate must be valid for
//! (also the SNI), and the Host header.

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use ruma::{OwnedServerName, ServerName};

pub const DEFAULT_PORT: u16 = 8448;
/// `/.well-known/matrix/server` answers without cache headers are kept this long (spec).
const WELL_KNOWN_DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);
/// Bounds of the cache time a server may ask for with `Cache-Control`.
const WELL_KNOWN_MIN_TTL: Duration = Duration::from_secs(5 * 60);
const WELL_KNOWN_MAX_TTL: Duration = Duration::from_secs(48 * 3600);
/// Failed or invalid answers are kept this long before asking again (spec: up to an hour).
const WELL_KNOWN_ERROR_TTL: Duration = Duration::from_secs(3600);
const WELL_KNOWN_TIMEOUT: Duration = Duration::from_secs(10);
const WELL_KNOWN_MAX_BYTES: usize = 50 * 1024;
/// Cached `.well-known` answers before the cache is emptied (names come from other servers).
const WELL_KNOWN_MAX_ENTRIES: usize = 10_000;

/// Where to send the requests for a server name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// The hostname (or IP address) the certificate must be valid for, also sent as SNI
    /// unless it is an IP address.
    pub tls_name: String,
    pub port: u16,
    /// The addresses to connect to.
    pub addrs: Vec<IpAddr>,
    /// The `Host` header of the requests.
    pub host_header: String,
}

impl Destination {
    fn ip(ip: IpAddr, port: u16, host_header: &str) -> Self {
        Destination { tls_name: ip.to_string(), port, addrs: vec![ip], host_header: host_header.to_owned() }
    }

    pub fn ip_literal(&self) -> Option<IpAddr> {
        self.tls_name.parse().ok()
    }

    /// `host:port` of the request URL (IPv6 addresses in brackets).
    pub fn authority(&self) -> String {
        match self.ip_literal() {
            Some(IpAddr::V6(ip)) => format!("[{ip}]:{}", self.port),
            _ => format!("{}:{}", self.tls_name, self.port),
        }
    }

    pub fn socket_addrs(&self) -> Vec<SocketAddr> {
        self.addrs.iter().map(|ip| SocketAddr::new(*ip, self.port)).collect()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot resolve {host}: {message}")]
pub struct DiscoveryError {
    pub host: String,
    pub message: String,
}

/// One SRV record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SrvRecord {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    /// Without the trailing dot; `.` (no service) is dropped by the lookup.
    pub target: String,
}

/// The DNS look-ups discovery needs.
pub trait Dns: Send + Sync + 'static {
    /// The addresses of a hostname (CNAME, AAAA and A records, and the hosts file).
    fn ips(&self, host: &str) -> impl Future<Output = Result<Vec<IpAddr>, DiscoveryError>> + Send;
    /// The SRV records of a name; empty when there are none.
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<SrvRecord>, DiscoveryError>> + Send;
}

/// DNS through hickory, with the system's resolver configuration.
pub struct HickoryDns(hickory_resolver::TokioResolver);

impl HickoryDns {
    pub fn from_system() -> anyhow::Result<Self> {
        let builder = match hickory_resolver::TokioResolver::builder_tokio() {
            Ok(builder) => builder,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the system's DNS configuration; using public resolvers");
                hickory_resolver::TokioResolver::builder_with_config(
                    hickory_resolver::config::ResolverConfig::default(),
                    hickory_resolver::net::runtime::TokioRuntimeProvider::default(),
                )
            }
        };
        Ok(HickoryDns(builder.build()?))
    }
}

impl Dns for HickoryDns {
    async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
        let error = |message: String| DiscoveryError { host: host.to_owned(), message };
        let lookup = self.0.lookup_ip(host).await.map_err(|e| error(e.to_string()))?;
        let ips: Vec<IpAddr> = lookup.iter().collect();
        if ips.is_empty() {
            return Err(error("no address".into()));
        }
        Ok(ips)
    }

    async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DiscoveryError> {
        match self.0.srv_lookup(format!("{name}.")).await {
            Ok(lookup) => Ok(lookup
                .answers()
                .iter()
                .filter_map(|record| match &record.data {
                    hickory_resolver::proto::rr::RData::SRV(srv) if !srv.target.is_root() => Some(SrvRecord {
                        priority: srv.priority,
                        weight: srv.weight,
                        port: srv.port,
                        target: srv.target.to_ascii().trim_end_matches('.').to_owned(),
                    }),
                    _ => None,
                })
                .collect()),
            Err(e) if e.is_no_records_found() => Ok(Vec::new()),
            Err(e) => Err(DiscoveryError { host: name.to_owned(), message: e.to_string() }),
        }
    }
}

/// The outcome of a `/.well-known/matrix/server` request, until `expires`.
#[derive(Debug, Clone)]
struct WellKnown {
    delegated: Option<OwnedServerName>,
    expires: Instant,
}

/// Resolves server names, caching `.well-known` answers. DNS answers are cached by the DNS
/// layer per their TTLs.
pub struct Resolver<D: Dns> {
    dns: Arc<D>,
    http: reqwest::Client,
    /// `https` and the default port in production; tests serve `.well-known` over plain
    /// HTTP on a free port.
    well_known_scheme: &'static str,
    well_known_port: Option<u16>,
    well_known: Mutex<HashMap<String, WellKnown>>,
}

impl<D: Dns> Resolver<D> {
    /// `tls` verifies the certificates of `.well-known` servers.
    pub fn new(dns: D, tls: rustls::ClientConfig) -> anyhow::Result<Self> {
        let dns = Arc::new(dns);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .dns_resolver(Arc::new(ResolveWith(dns.clone())))
            .timeout(WELL_KNOWN_TIMEOUT)
            .redirect(reqwest::redirect::Policy::limited(5))
            .user_agent(concat!("Plexus/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Resolver { dns, http, well_known_scheme: "https", well_known_port: None, well_known: Mutex::default() })
    }

    /// Resolves a server name.
    pub async fn resolve(&self, server: &ServerName) -> Result<Destination, DiscoveryError> {
        let host = server.host();
        // 1. An IP literal, with its port or 8448.
        if let Some(ip) = ip_literal(host) {
            return Ok(Destination::ip(ip, server.port().unwrap_or(DEFAULT_PORT), server.as_str()));
        }
        // 2. A hostname with an explicit port.
        if let Some(port) = server.port() {
            let addrs = self.dns.ips(host).await?;
            return Ok(Destination { tls_name: host.to_owned(), port, addrs, host_header: server.as_str().to_owned() });
        }
        // 3. Delegation by `.well-known`, else 4-6 on the hostname itself.
        match self.well_known(host).await {
            Some(delegated) => self.resolve_delegated(&delegated).await,
            None => self.resolve_hostname(host).await,
        }
    }

    async fn resolve_delegated(&self, delegated: &ServerName) -> Result<Destination, DiscoveryError> {
        let host = delegated.host();
        // 3.1 An IP literal.
        if let Some(ip) = ip_literal(host) {
            return Ok(Destination::ip(ip, delegated.port().unwrap_or(DEFAULT_PORT), delegated.as_str()));
        }
        // 3.2 A hostname with a port.
        if let Some(port) = delegated.port() {
            let addrs = self.dns.ips(host).await?;
            let host_header = delegated.as_str().to_owned();
            return Ok(Destination { tls_name: host.to_owned(), port, addrs, host_header });
        }
        // 3.3-3.5: SRV records of the delegated hostname, else its addresses and 8448.
        self.resolve_hostname(host).await
    }

    /// SRV `_matrix-fed._tcp`, then the deprecated `_matrix._tcp`, else the hostname's own
    /// addresses on port 8448. The certificate and Host header stay the hostname's.
    async fn resolve_hostname(&self, host: &str) -> Result<Destination, DiscoveryError> {
        for service in ["_matrix-fed._tcp", "_matrix._tcp"] {
            let records = match self.dns.srv(&format!("{service}.{host}")).await {
                Ok(records) => records,
                Err(e) => {
                    tracing::debug!(host, service, error = %e, "SRV look-up failed");
                    Vec::new()
                }
            };
            if let Some(record) = pick_srv(&records) {
                let addrs = self.dns.ips(&record.target).await?;
                return Ok(Destination {
                    tls_name: host.to_owned(),
                    port: record.port,
                    addrs,
                    host_header: host.to_owned(),
                });
            }
        }
        let addrs = self.dns.ips(host).await?;
        Ok(Destination { tls_name: host.to_owned(), port: DEFAULT_PORT, addrs, host_header: host.to_owned() })
    }

    /// The delegated server name of `host`, from the cache or a fresh request.
    async fn well_known(&self, host: &str) -> Option<OwnedServerName> {
        let now = Instant::now();
        if let Some(cached) = self.well_known.lock().unwrap_or_else(|e| e.into_inner()).get(host)
            && cached.expires > now
        {
            return cached.delegated.clone();
        }
        let (delegated, ttl) = match self.fetch_well_known(host).await {
            Ok((name, ttl)) => (Some(name), ttl),
            Err(e) => {
                tracing::debug!(host, error = %e, "no usable /.well-known/matrix/server");
                (None, WELL_KNOWN_ERROR_TTL)
            }
        };
        let mut cache = self.well_known.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= WELL_KNOWN_MAX_ENTRIES {
            cache.retain(|_, entry| entry.expires > now);
            if cache.len() >= WELL_KNOWN_MAX_ENTRIES {
                cache.clear();
            }
        }
        cache.insert(host.to_owned(), WellKnown { delegated: delegated.clone(), expires: now + ttl });
        delegated
    }

    async fn fetch_well_known(&self, host: &str) -> Result<(OwnedServerName, Duration), String> {
        let port = self.well_known_port.map_or(String::new(), |p| format!(":{p}"));
        let url = format!("{}://{host}{port}/.well-known/matrix/server", self.well_known_scheme);
        let mut response = self.http.get(&url).send().await.map_err(|e| e.to_string())?;
        if response.status() != reqwest::StatusCode::OK {
            return Err(format!("status {}", response.status()));
        }
        let ttl = cache_period(response.headers().get_all(reqwest::header::CACHE_CONTROL));
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(|e| e.to_string())? {
            body.extend_from_slice(&chunk);
            if body.len() > WELL_KNOWN_MAX_BYTES {
                return Err("answer too large".into());
            }
        }
        Ok((delegated_server_name(&body)?, ttl))
    }
}

/// The server name a `/.well-known/matrix/server` body delegates to. The spec says to parse
/// the body as JSON whatever its Content-Type.
pub fn delegated_server_name(body: &[u8]) -> Result<OwnedServerName, String> {
    let json: serde_json::Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let name = json.get("m.server").and_then(|v| v.as_str()).ok_or("no m.server string")?;
    OwnedServerName::try_from(name).map_err(|e| format!("m.server is not a server name: {e}"))
}

fn ip_literal(host: &str) -> Option<IpAddr> {
    host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host).parse().ok()
}

/// How long to keep a `.well-known` answer, from its `Cache-Control` headers.
pub fn cache_period<'a>(values: impl IntoIterator<Item = &'a reqwest::header::HeaderValue>) -> Duration {
    let mut period = None;
    for directive in values.into_iter().filter_map(|v| v.to_str().ok()).flat_map(|v| v.split(',')) {
        let directive = directive.trim().to_ascii_lowercase();
        if directive == "no-store" || directive == "no-cache" {
            return WELL_KNOWN_MIN_TTL;
        }
        if let Some(seconds) = directive.strip_prefix("max-age=").and_then(|s| s.trim_matches('"').parse().ok()) {
            period = Some(Duration::from_secs(seconds));
        }
    }
    period.map_or(WELL_KNOWN_DEFAULT_TTL, |p| p.clamp(WELL_KNOWN_MIN_TTL, WELL_KNOWN_MAX_TTL))
}

/// The record to use (RFC 2782): the lowest priority, chosen at random by weight among equals.
fn pick_srv(records: &[SrvRecord]) -> Option<&SrvRecord> {
    let best = records.iter().map(|r| r.priority).min()?;
    let candidates: Vec<&SrvRecord> = records.iter().filter(|r| r.priority == best).collect();
    let total: u32 = candidates.iter().map(|r| u32::from(r.weight)).sum();
    if total == 0 {
        return candidates.first().copied();
    }
    let mut roll = rand::thread_rng().gen_range(0..total);
    for record in &candidates {
        if roll < u32::from(record.weight) {
            return Some(record);
        }
        roll -= u32::from(record.weight);
    }
    candidates.last().copied()
}

/// Lets reqwest resolve hostnames (of `.well-known` requests) through our DNS.
struct ResolveWith<D>(Arc<D>);

impl<D: Dns> reqwest::dns::Resolve for ResolveWith<D> {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let dns = self.0.clone();
        Box::pin(async move {
            let ips = dns.ips(name.as_str()).await?;
            let addrs: reqwest::dns::Addrs = Box::new(ips.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::routing::get;

    use super::*;

    /// DNS from tables; counts nothing, fails for unknown hosts.
    #[derive(Default)]
    struct FakeDns {
        hosts: HashMap<String, Vec<IpAddr>>,
        srv: HashMap<String, Vec<SrvRecord>>,
    }

    impl FakeDns {
        fn host(mut self, name: &str, ip: &str) -> Self {
            self.hosts.entry(name.into()).or_default().push(ip.parse().unwrap());
            self
        }
        fn srv(mut self, name: &str, target: &str, port: u16) -> Self {
            let record = SrvRecord { priority: 10, weight: 0, port, target: target.into() };
            self.srv.entry(name.into()).or_default().push(record);
            self
        }
    }

    impl Dns for FakeDns {
        async fn ips(&self, host: &str) -> Result<Vec<IpAddr>, DiscoveryError> {
            self.hosts.get(host).cloned().ok_or(DiscoveryError { host: host.into(), message: "NXDOMAIN".into() })
        }
        async fn srv(&self, name: &str) -> Result<Vec<SrvRecord>, DiscoveryError> {
            Ok(self.srv.get(name).cloned().unwrap_or_default())
        }
    }

    fn tls() -> rustls::ClientConfig {
        crate::federation::tls::client_config(&Default::default()).unwrap()
    }

    /// A resolver whose `.well-known` requests go to plain HTTP on `port`.
    fn resolver(dns: FakeDns, port: u16) -> Resolver<FakeDns> {
        let mut resolver = Resolver::new(dns, tls()).unwrap();
        resolver.well_known_scheme = "http";
        resolver.well_known_port = Some(port);
        resolver
    }

    fn dest(tls_name: &str, port: u16, addrs: &[&str], host_header: &str) -> Destination {
        Destination {
            tls_name: tls_name.into(),
            port,
            addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
            host_header: host_header.into(),
        }
    }

    fn name(s: &str) -> &ServerName {
        s.try_into().unwrap()
    }

    /// Serves `/.well-known/matrix/server` answers by host on a loopback port; counts requests.
    async fn well_known_server(
        answers: Vec<(&'static str, u16, Option<&'static str>, &'static str)>,
    ) -> (u16, Arc<AtomicUsize>) {
        let hits = Arc::new(AtomicUsize::new(0));
        let counter = hits.clone();
        let app = Router::new().route(
            "/.well-known/matrix/server",
            get(move |headers: axum::http::HeaderMap| {
                let counter = counter.clone();
                let answers = answers.clone();
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    let host = headers.get("host").and_then(|h| h.to_str().ok()).unwrap_or("").to_owned();
                    let host = host.split(':').next().unwrap_or("").to_owned();
                    let (_, status, cache, body) =
                        answers.into_iter().find(|a| a.0 == host).unwrap_or(("", 404, None, "{}"));
                    let mut response = axum::response::Response::new(axum::body::Body::from(body));
                    *response.status_mut() = axum::http::StatusCode::from_u16(status).unwrap();
                    if let Some(cache) = cache {
                        response.headers_mut().insert("cache-control", cache.parse().unwrap());
                    }
                    response
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (port, hits)
    }

    #[tokio::test]
    async fn ip_literals_and_explicit_ports_need_no_well_known() {
        let r = resolver(FakeDns::default().host("example.org", "192.0.2.1"), 1);
        let d = r.resolve(name("127.0.0.1:8481")).await.unwrap();
        assert_eq!(d, dest("127.0.0.1", 8481, &["127.0.0.1"], "127.0.0.1:8481"));
        assert_eq!(d.authority(), "127.0.0.1:8481");
        let d = r.resolve(name("[::1]")).await.unwrap();
        assert_eq!(d, dest("::1", 8448, &["::1"], "[::1]"));
        assert_eq!(d.authority(), "[::1]:8448");
        let d = r.resolve(name("example.org:1234")).await.unwrap();
        assert_eq!(d, dest("example.org", 1234, &["192.0.2.1"], "example.org:1234"));
        assert!(r.resolve(name("unknown.org:1234")).await.is_err());
    }

    #[tokio::test]
    async fn well_known_delegation_in_all_its_forms() {
        let (port, _) = well_known_server(vec![
            ("to-ip.test", 200, None, r#"{"m.server": "192.0.2.7"}"#),
            ("to-port.test", 200, None, r#"{"m.server": "matrix.to-port.test:4430"}"#),
            ("to-srv.test", 200, None, r#"{"m.server": "matrix.to-srv.test"}"#),
            ("to-legacy-srv.test", 200, None, r#"{"m.server": "legacy.test"}"#),
            ("to-name.test", 200, None, r#"{"m.server": "plain.test"}"#),
        ])
        .await;
        let dns = FakeDns::default()
            .host("to-ip.test", "127.0.0.1")
            .host("to-port.test", "127.0.0.1")
            .host("to-srv.test", "127.0.0.1")
            .host("to-legacy-srv.test", "127.0.0.1")
            .host("to-name.test", "127.0.0.1")
            .host("matrix.to-port.test", "192.0.2.2")
            .srv("_matrix-fed._tcp.matrix.to-srv.test", "fed.target.test", 8555)
            .srv("_matrix._tcp.matrix.to-srv.test", "wrong.target.test", 1)
            .host("fed.target.test", "192.0.2.3")
            .srv("_matrix._tcp.legacy.test", "legacy.target.test", 8666)
            .host("legacy.target.test", "192.0.2.4")
            .host("plain.test", "192.0.2.5");
        let r = resolver(dns, port);
        // 3.1: delegated to an IP literal without a port.
        assert_eq!(r.resolve(name("to-ip.test")).await.unwrap(), dest("192.0.2.7", 8448, &["192.0.2.7"], "192.0.2.7"));
        // 3.2: a hostname with a port.
        let d = r.resolve(name("to-port.test")).await.unwrap();
        assert_eq!(d, dest("matrix.to-port.test", 4430, &["192.0.2.2"], "matrix.to-port.test:4430"));
        // 3.3: SRV _matrix-fed._tcp of the delegated name (before _matrix._tcp).
        let d = r.resolve(name("to-srv.test")).await.unwrap();
        assert_eq!(d, dest("matrix.to-srv.test", 8555, &["192.0.2.3"], "matrix.to-srv.test"));
        // 3.4: the deprecated _matrix._tcp.
        let d = r.resolve(name("to-legacy-srv.test")).await.unwrap();
        assert_eq!(d, dest("legacy.test", 8666, &["192.0.2.4"], "legacy.test"));
        // 3.5: no SRV: the delegated name's address and 8448.
        assert_eq!(
            r.resolve(name("to-name.test")).await.unwrap(),
            dest("plain.test", 8448, &["192.0.2.5"], "plain.test")
        );
    }

    #[tokio::test]
    async fn without_well_known_srv_then_address() {
        let (port, hits) = well_known_server(vec![
            ("bad-json.test", 200, None, "not json"),
            ("bad-name.test", 200, None, r#"{"m.server": "bad name!"}"#),
        ])
        .await;
        let dns = FakeDns::default()
            .host("srv.test", "127.0.0.1")
            .srv("_matrix-fed._tcp.srv.test", "target.test", 8777)
            .host("target.test", "192.0.2.8")
            .host("bad-json.test", "127.0.0.1")
            .host("bad-name.test", "127.0.0.1");
        let r = resolver(dns, port);
        // 4: a 404 falls back to the hostname's SRV record.
        assert_eq!(r.resolve(name("srv.test")).await.unwrap(), dest("srv.test", 8777, &["192.0.2.8"], "srv.test"));
        // 6: invalid answers fall back to the hostname itself on 8448.
        let d = r.resolve(name("bad-json.test")).await.unwrap();
        assert_eq!(d, dest("bad-json.test", 8448, &["127.0.0.1"], "bad-json.test"));
        let d = r.resolve(name("bad-name.test")).await.unwrap();
        assert_eq!(d, dest("bad-name.test", 8448, &["127.0.0.1"], "bad-name.test"));
        // Errors are cached too: no new request.
        let before = hits.load(Ordering::SeqCst);
        r.resolve(name("srv.test")).await.unwrap();
        r.resolve(name("bad-json.test")).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), before);
        // A hostname that resolves to nothing at all is an error.
        assert!(r.resolve(name("nowhere.test")).await.is_err());
    }

    #[tokio::test]
    async fn well_known_answers_are_cached_per_cache_control() {
        let (port, hits) = well_known_server(vec![(
            "cached.test",
            200,
            Some("public, max-age=600"),
            r#"{"m.server": "192.0.2.9:1"}"#,
        )])
        .await;
        let r = resolver(FakeDns::default().host("cached.test", "127.0.0.1"), port);
        for _ in 0..3 {
            assert_eq!(r.resolve(name("cached.test")).await.unwrap().port, 1);
        }
        assert_eq!(hits.load(Ordering::SeqCst), 1);
        let expires = r.well_known.lock().unwrap()["cached.test"].expires;
        let ttl = expires - Instant::now();
        assert!(ttl > Duration::from_secs(590) && ttl <= Duration::from_secs(600), "{ttl:?}");
        // Once expired, asked again.
        r.well_known.lock().unwrap().get_mut("cached.test").unwrap().expires = Instant::now();
        r.resolve(name("cached.test")).await.unwrap();
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn cache_control_rules() {
        let h = |v: &str| reqwest::header::HeaderValue::from_str(v).unwrap();
        assert_eq!(cache_period([]), WELL_KNOWN_DEFAULT_TTL);
        assert_eq!(cache_period([&h("max-age=3600")]), Duration::from_secs(3600));
        assert_eq!(cache_period([&h("public, Max-Age=7200")]), Duration::from_secs(7200));
        assert_eq!(cache_period([&h("max-age=1")]), WELL_KNOWN_MIN_TTL);
        assert_eq!(cache_period([&h("max-age=99999999")]), WELL_KNOWN_MAX_TTL);
        assert_eq!(cache_period([&h("max-age=60"), &h("no-store")]), WELL_KNOWN_MIN_TTL);
        assert_eq!(cache_period([&h("max-age=nonsense")]), WELL_KNOWN_DEFAULT_TTL);
    }

    #[test]
    fn srv_records_by_priority_then_weight() {
        let record = |priority, weight, port| SrvRecord { priority, weight, port, target: "t".into() };
        assert_eq!(pick_srv(&[]), None);
        let records = [record(20, 100, 1), record(10, 0, 2), record(30, 5, 3)];
        assert_eq!(pick_srv(&records).unwrap().port, 2);
        let records = [record(10, 0, 1), record(10, 50, 2)];
        for _ in 0..20 {
            assert_eq!(pick_srv(&records).unwrap().port, 2);
        }
    }

    #[tokio::test]
    async fn system_dns_knows_localhost() {
        // `localhost:PORT` server names resolve through the hosts file.
        let ips = HickoryDns::from_system().unwrap().ips("localhost").await.unwrap();
        assert!(ips.iter().all(IpAddr::is_loopback) && !ips.is_empty(), "{ips:?}");
    }

    #[test]
    fn ip_literal_hosts() {
        assert_eq!(ip_literal("127.0.0.1"), Some("127.0.0.1".parse().unwrap()));
        assert_eq!(ip_literal("[2001:db8::1]"), Some("2001:db8::1".parse().unwrap()));
        assert_eq!(ip_literal("example.org"), None);
    }
}
