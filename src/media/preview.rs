//! Link previews: fetch a page for a client, read its OpenGraph tags and title, copy its image
//! into the media store, and cache the answer for an hour.
//!
//! Against server-side request forgery, every address the server connects to (each redirect
//! hop, the image, after DNS resolution) must pass the address policy: loopback, private,
//! link-local and other special-purpose ranges are refused unless allow-listed.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use bytes::Bytes;
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use ruma::UserId;
use serde_json::{Map, Value, json};
use url::{Host, Url};

use super::html;
use crate::Services;
use crate::config::MediaConfig;
use crate::error::{Error, Result};
use crate::storage::{self, now_ms};

/// How long a preview is reused.
const CACHE_MS: i64 = 60 * 60 * 1000;
/// How much of a page is read (the tags previews need are at its start).
const MAX_PAGE_BYTES: usize = 2 * 1024 * 1024;
/// Time allowed for one whole fetch, body included.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_REDIRECTS: usize = 5;
/// The schemes previews follow.
const WEB: &[&str] = &["http", "https"];
/// Longest title or description kept.
const MAX_TEXT_CHARS: usize = 500;

pub struct Previewer {
    fetcher: GuardedClient,
}

/// An HTTP client for URLs chosen by others (pages to preview, where remote media redirects
/// to): every address it connects to must pass the address policy.
pub struct GuardedClient {
    client: reqwest::Client,
    policy: Arc<AddressPolicy>,
}

/// Which addresses previews may connect to.
pub struct AddressPolicy {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

/// Ranges that are never fetched unless allow-listed: this host, private networks, and
/// addresses with a special purpose (IANA special-purpose registries).
const SPECIAL_V4: [Ipv4Net; 15] = [
    Ipv4Net::new_assert(Ipv4Addr::new(0, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(10, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(100, 64, 0, 0), 10),
    Ipv4Net::new_assert(Ipv4Addr::new(127, 0, 0, 0), 8),
    Ipv4Net::new_assert(Ipv4Addr::new(169, 254, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(172, 16, 0, 0), 12),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 0, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 0, 2, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 88, 99, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(192, 168, 0, 0), 16),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 18, 0, 0), 15),
    Ipv4Net::new_assert(Ipv4Addr::new(198, 51, 100, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(203, 0, 113, 0), 24),
    Ipv4Net::new_assert(Ipv4Addr::new(224, 0, 0, 0), 4),
    Ipv4Net::new_assert(Ipv4Addr::new(240, 0, 0, 0), 4),
];
const SPECIAL_V6: [Ipv6Net; 9] = [
    Ipv6Net::new_assert(Ipv6Addr::UNSPECIFIED, 128),
    Ipv6Net::new_assert(Ipv6Addr::LOCALHOST, 128),
    Ipv6Net::new_assert(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, 0, 0), 96),
    Ipv6Net::new_assert(Ipv6Addr::new(0x100, 0, 0, 0, 0, 0, 0, 0), 64),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 0), 32),
    Ipv6Net::new_assert(Ipv6Addr::new(0x2002, 0, 0, 0, 0, 0, 0, 0), 16),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),
    Ipv6Net::new_assert(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10),
    Ipv6Net::new_assert(Ipv6Addr::new(0xff00, 0, 0, 0, 0, 0, 0, 0), 8),
];

impl AddressPolicy {
    pub fn new(config: &MediaConfig) -> Self {
        Self { allow: config.preview_ip_allowlist.clone(), deny: config.preview_ip_denylist.clone() }
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        // An IPv4 address written as IPv6 (::ffff:a.b.c.d) is judged as the IPv4 address.
        let ip = ip.to_canonical();
        if self.allow.iter().any(|net| net.contains(&ip)) {
            return true;
        }
        let special = match ip {
            IpAddr::V4(v4) => SPECIAL_V4.iter().any(|net| net.contains(&v4)),
            IpAddr::V6(v6) => {
                // IPv4-compatible (::a.b.c.d) addresses are deprecated: refused outright.
                v6.segments()[..6].iter().all(|&s| s == 0) || SPECIAL_V6.iter().any(|net| net.contains(&v6))
            }
        };
        !special && !self.deny.iter().any(|net| net.contains(&ip))
    }
}

/// The error a resolution gives when the policy refuses the host's addresses.
#[derive(Debug, thiserror::Error)]
#[error("the address of this host may not be fetched")]
struct AddressRefused;

/// Resolves names through the system resolver, then refuses hosts with any address the policy
/// does not permit (a host mixing public and private addresses is refused altogether).
struct PolicyResolver(Arc<AddressPolicy>);

impl Resolve for PolicyResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let policy = self.0.clone();
        let host = name.as_str().to_owned();
        Box::pin(async move {
            let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host.as_str(), 0)).await?.collect();
            if addrs.is_empty() || !addrs.iter().all(|a| policy.permits(a.ip())) {
                return Err(AddressRefused.into());
            }
            Ok(Box::new(addrs.into_iter()) as Addrs)
        })
    }
}

fn refused() -> Error {
    Error::forbidden("This server may not fetch from this address")
}

fn fetch_failed(detail: impl std::fmt::Display) -> Error {
    Error::matrix(StatusCode::BAD_GATEWAY, "M_UNKNOWN", format!("Failed to fetch the URL: {detail}"))
}

/// A reqwest failure: refused by the policy (403) or the far end failed (502).
fn request_error(e: reqwest::Error) -> Error {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(&e);
    while let Some(s) = source {
        if s.is::<AddressRefused>() {
            return refused();
        }
        source = s.source();
    }
    fetch_failed(e)
}

impl Previewer {
    pub fn new(config: &MediaConfig) -> anyhow::Result<Self> {
        Ok(Self { fetcher: GuardedClient::new(config, "link preview", FETCH_TIMEOUT)? })
    }
}

impl GuardedClient {
    /// A client whose requests take at most `timeout`, body included.
    pub fn new(config: &MediaConfig, purpose: &str, timeout: Duration) -> anyhow::Result<Self> {
        let policy = Arc::new(AddressPolicy::new(config));
        let client = reqwest::Client::builder()
            .user_agent(format!("Plexus/{} ({purpose})", env!("CARGO_PKG_VERSION")))
            .dns_resolver(Arc::new(PolicyResolver(policy.clone())))
            // A proxy would connect on our behalf to addresses the policy never sees.
            .no_proxy()
            // Redirects are followed by hand so that each hop's address is checked.
            .redirect(reqwest::redirect::Policy::none())
            .timeout(timeout)
            .build()?;
        Ok(Self { client, policy })
    }

    /// GETs `url`, following redirects (each to one of `schemes`), and answers the final URL
    /// and the successful response.
    pub async fn fetch(&self, mut url: Url, accept: &str, schemes: &[&str]) -> Result<(Url, reqwest::Response)> {
        for _ in 0..=MAX_REDIRECTS {
            if !schemes.contains(&url.scheme()) {
                return Err(Error::invalid_param(format!("Only {} URLs can be fetched", schemes.join(" and "))));
            }
            // IP literals are not resolved, so the resolver's check does not see them.
            let literal = match url.host() {
                Some(Host::Ipv4(ip)) => Some(IpAddr::V4(ip)),
                Some(Host::Ipv6(ip)) => Some(IpAddr::V6(ip)),
                Some(Host::Domain(_)) => None,
                None => return Err(Error::invalid_param("URL has no host")),
            };
            if literal.is_some_and(|ip| !self.policy.permits(ip)) {
                return Err(refused());
            }
            let resp = self
                .client
                .get(url.clone())
                .header(reqwest::header::ACCEPT, accept)
                .send()
                .await
                .map_err(request_error)?;
            if resp.status().is_redirection() {
                let location = resp
                    .headers()
                    .get(reqwest::header::LOCATION)
                    .and_then(|l| l.to_str().ok())
                    .ok_or_else(|| fetch_failed("redirect without a location"))?;
                url = url.join(location).map_err(fetch_failed)?;
                continue;
            }
            if !resp.status().is_success() {
                return Err(fetch_failed(format!("the server answered {}", resp.status())));
            }
            return Ok((url, resp));
        }
        Err(fetch_failed("too many redirects"))
    }
}

fn content_type(resp: &reqwest::Response) -> String {
    resp.headers()
        .get(reqwest::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream")
        .to_ascii_lowercase()
}

/// The body as chunks, for streaming into the media store.
pub fn body_stream(resp: reqwest::Response) -> impl futures::Stream<Item = reqwest::Result<Bytes>> {
    futures::stream::try_unfold(resp, |mut resp| async move { Ok(resp.chunk().await?.map(|chunk| (chunk, resp))) })
}

/// Reads at most `limit` bytes of the body (the rest is not needed).
async fn read_start(mut resp: reqwest::Response, limit: usize) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    while body.len() < limit {
        match resp.chunk().await.map_err(request_error)? {
            Some(chunk) => body.extend_from_slice(&chunk[..chunk.len().min(limit - body.len())]),
            None => break,
        }
    }
    Ok(body)
}

/// Text of a page in the charset its Content-Type names (UTF-8 unless Latin-1 is named).
fn decode_text(body: &[u8], content_type: &str) -> String {
    let latin1 =
        ["charset=iso-8859-1", "charset=latin1", "charset=windows-1252"].iter().any(|c| content_type.contains(c));
    if latin1 { body.iter().map(|&b| char::from(b)).collect() } else { String::from_utf8_lossy(body).into_owned() }
}

fn truncate(text: &str) -> String {
    text.chars().take(MAX_TEXT_CHARS).collect()
}

/// `GET /_matrix/client/v1/media/preview_url`: the OpenGraph data of a URL.
pub async fn preview(state: &Services, user: &UserId, url: &str) -> Result<Value> {
    let previewer = state.media.previewer.as_ref().ok_or_else(Error::unrecognized)?;
    let mut url = Url::parse(url).map_err(|e| Error::invalid_param(format!("Invalid URL: {e}")))?;
    url.set_fragment(None);
    let now = now_ms();
    if let Some(cached) = storage::media::get_preview(&state.db, url.as_str(), now).await? {
        return serde_json::from_str(&cached).map_err(|e| Error::Internal(e.into()));
    }
    state.media.limiter.check_user("media_preview", user.as_str())?;
    let (final_url, resp) = previewer.fetcher.fetch(url.clone(), "text/html, image/*;q=0.9, */*;q=0.5", WEB).await?;
    let kind = content_type(&resp);
    let og = if kind.starts_with("text/html") || kind.starts_with("application/xhtml+xml") {
        let body = read_start(resp, MAX_PAGE_BYTES).await?;
        page_preview(state, previewer, user, &final_url, &decode_text(&body, &kind)).await
    } else if kind.starts_with("image/") {
        store_image(state, user, resp, kind).await?
    } else {
        Map::new()
    };
    let og = Value::Object(og);
    let mut tx = state.db.begin().await?;
    storage::media::put_preview(&mut tx, url.as_str(), &og.to_string(), now, now + CACHE_MS).await?;
    tx.commit().await?;
    Ok(og)
}

/// The OpenGraph tags of a page, with the title and description as fallbacks, and its image
/// copied into the media store (left out when it cannot be fetched).
async fn page_preview(
    state: &Services,
    previewer: &Previewer,
    user: &UserId,
    page_url: &Url,
    html: &str,
) -> Map<String, Value> {
    let page = html::scan(html);
    let mut og = Map::new();
    for (key, content) in &page.metas {
        if key.starts_with("og:") && !og.contains_key(key) {
            og.insert(key.clone(), json!(truncate(content)));
        }
    }
    let fallbacks =
        [("og:title", page.title.as_deref().filter(|t| !t.is_empty())), ("og:description", page.get("description"))];
    for (key, text) in fallbacks {
        if let Some(text) = text.filter(|_| !og.contains_key(key)) {
            og.insert(key.into(), json!(truncate(text)));
        }
    }
    let image_url = page.get("og:image").and_then(|src| page_url.join(src).ok());
    // The page's own image fields are replaced by those of the stored copy.
    og.retain(|key, _| !key.starts_with("og:image"));
    if let Some(image_url) = image_url {
        let image = match previewer.fetcher.fetch(image_url, "image/*", WEB).await {
            Ok((_, resp)) => {
                let kind = content_type(&resp);
                store_image(state, user, resp, kind).await
            }
            Err(e) => Err(e),
        };
        match image {
            Ok(fields) => og.extend(fields),
            Err(e) => tracing::info!(error = %e, "link preview: image not stored"),
        }
    }
    og
}

/// Copies an image into the media store (within the upload size limit) and answers the
/// preview fields describing it.
async fn store_image(
    state: &Services,
    user: &UserId,
    resp: reqwest::Response,
    kind: String,
) -> Result<Map<String, Value>> {
    if !kind.starts_with("image/") {
        return Err(fetch_failed(format!("not an image: {kind}")));
    }
    let max = state.config.media.max_upload_bytes;
    if resp.content_length().is_some_and(|len| len > max) {
        return Err(Error::too_large("Image is too large"));
    }
    let content = state.media.store.write_stream(body_stream(resp), max).await.map_err(fetch_failed)?;
    let path = state.media.store.path(&content);
    let (width, height) = tokio::task::spawn_blocking(move || super::thumbnail::dimensions(&path))
        .await
        .map_err(|e| Error::Internal(e.into()))?
        .map_err(fetch_failed)?;
    let media_id = super::record_upload(state, user, &content, &kind, None).await?;
    let mut fields = Map::new();
    fields.insert("og:image".into(), json!(super::mxc(&state.config.server_name, &media_id)));
    fields.insert("og:image:type".into(), json!(kind));
    fields.insert("og:image:width".into(), json!(width));
    fields.insert("og:image:height".into(), json!(height));
    fields.insert("matrix:image:size".into(), json!(content.size));
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn special_addresses_are_refused_unless_allowed() {
        let mut config = MediaConfig::default();
        let policy = AddressPolicy::new(&config);
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "192.168.1.1",
            "172.20.0.1",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "fd00::1",
            "::ffff:127.0.0.1",
            "::127.0.0.1",
            "100.64.0.1",
            "224.0.0.1",
        ] {
            assert!(!policy.permits(ip.parse().unwrap()), "{ip} permitted");
        }
        for ip in ["93.184.215.14", "2606:4700::1111", "::ffff:8.8.8.8"] {
            assert!(policy.permits(ip.parse().unwrap()), "{ip} refused");
        }
        config.preview_ip_allowlist = vec!["127.0.0.0/8".parse().unwrap()];
        config.preview_ip_denylist = vec!["8.8.8.0/24".parse().unwrap()];
        let policy = AddressPolicy::new(&config);
        assert!(policy.permits("127.0.0.1".parse().unwrap()));
        assert!(!policy.permits("8.8.8.8".parse().unwrap()));
        assert!(!policy.permits("10.0.0.1".parse().unwrap()));
    }
}
