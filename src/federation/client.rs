//! Outbound federation requests: discovery of the destination, HTTPS (rustls) with a pooled
//! client per destination, `X-Matrix` signing, timeouts and typed errors.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{Method, StatusCode};
use ruma::{CanonicalJsonValue, OwnedServerName, ServerName};
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::discovery::{DiscoveryError, HickoryDns, Resolver};
use crate::Services;
use crate::config::FederationConfig;
use crate::error::Error;

/// Default time limit of a whole request.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a destination's resolution (and its pooled connections) is reused.
const CLIENT_TTL: Duration = Duration::from_secs(3600);
/// Destinations with a pooled client before the idle ones are dropped.
const MAX_ROUTES: usize = 10_000;

#[derive(Debug, thiserror::Error)]
pub enum FederationError {
    #[error("cannot find {destination}: {source}")]
    Discovery {
        destination: OwnedServerName,
        #[source]
        source: DiscoveryError,
    },
    #[error("cannot reach {destination}: {source}")]
    Unreachable {
        destination: OwnedServerName,
        #[source]
        source: reqwest::Error,
    },
    #[error("{destination} did not answer in time")]
    Timeout { destination: OwnedServerName },
    /// The destination answered with an error status.
    #[error("{destination} answered {status}: {errcode}: {message}")]
    Remote { destination: OwnedServerName, status: StatusCode, errcode: String, message: String },
    #[error("{destination} answered something unexpected: {message}")]
    InvalidResponse { destination: OwnedServerName, message: String },
    #[error("cannot build the request: {0}")]
    Request(String),
}

/// Error codes passed through to clients when a remote server refuses a request.
const PASSED_THROUGH: &[&str] = &[
    "M_FORBIDDEN",
    "M_NOT_FOUND",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_INVALID_PARAM",
    "M_MISSING_PARAM",
    "M_INCOMPATIBLE_ROOM_VERSION",
    "M_UNSUPPORTED_ROOM_VERSION",
    "M_LIMIT_EXCEEDED",
    "M_TOO_LARGE",
    "M_UNRECOGNIZED",
];

impl From<FederationError> for Error {
    /// What a client is told: a remote refusal (4xx other than 401, which is about our
    /// signature, not the client) keeps its status and error code; anything else is 502.
    fn from(e: FederationError) -> Self {
        if let FederationError::Remote { status, errcode, message, .. } = &e
            && status.is_client_error()
            && *status != StatusCode::UNAUTHORIZED
            && let Some(code) = PASSED_THROUGH.iter().find(|c| **c == errcode)
        {
            return Error::matrix(*status, code, message.clone());
        }
        Error::matrix(StatusCode::BAD_GATEWAY, "M_UNKNOWN", e.to_string())
    }
}

/// A destination's pooled HTTP client and where its requests go.
struct Route {
    http: reqwest::Client,
    /// `https://host:port` (or `http://` for IP literals in tests).
    base: String,
    host_header: String,
    expires: Instant,
}

pub struct Client {
    resolver: Resolver<HickoryDns>,
    tls: rustls::ClientConfig,
    plain_http_ip_literals: bool,
    routes: Mutex<HashMap<OwnedServerName, Arc<Route>>>,
}

impl Client {
    pub fn new(config: &FederationConfig) -> anyhow::Result<Self> {
        let tls = super::tls::client_config(config)?;
        if config.insecure_plain_http {
            tracing::warn!("federation.insecure_plain_http is on: IP-literal servers are spoken to WITHOUT TLS");
        }
        Ok(Client {
            resolver: Resolver::new(HickoryDns::from_system()?, tls.clone())?,
            tls,
            plain_http_ip_literals: config.insecure_plain_http,
            routes: Mutex::default(),
        })
    }

    async fn route(&self, destination: &ServerName) -> Result<Arc<Route>, FederationError> {
        let now = Instant::now();
        if let Some(route) = self.routes.lock().unwrap_or_else(|e| e.into_inner()).get(destination)
            && route.expires > now
        {
            return Ok(route.clone());
        }
        let found = self
            .resolver
            .resolve(destination)
            .await
            .map_err(|source| FederationError::Discovery { destination: destination.to_owned(), source })?;
        let mut builder = reqwest::Client::builder()
            .use_preconfigured_tls(self.tls.clone())
            .connect_timeout(CONNECT_TIMEOUT)
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("Plexus/", env!("CARGO_PKG_VERSION")));
        let scheme = match found.ip_literal() {
            Some(_) if self.plain_http_ip_literals => "http",
            Some(_) => "https",
            None => {
                // Connect to the discovered addresses while the URL keeps the name the
                // certificate must match.
                builder = builder.resolve_to_addrs(&found.tls_name, &found.socket_addrs());
                "https"
            }
        };
        let http = builder.build().map_err(|e| FederationError::Request(e.to_string()))?;
        let route = Arc::new(Route {
            http,
            base: format!("{scheme}://{}", found.authority()),
            host_header: found.host_header,
            expires: now + CLIENT_TTL,
        });
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        if routes.len() >= MAX_ROUTES {
            routes.retain(|_, r| r.expires > now && Arc::strong_count(r) > 1);
        }
        routes.insert(destination.to_owned(), route.clone());
        Ok(route)
    }

    /// Forgets how to reach a destination (after a connection failure, so that the next
    /// attempt discovers it again).
    fn forget(&self, destination: &ServerName) {
        self.routes.lock().unwrap_or_else(|e| e.into_inner()).remove(destination);
    }
}

/// Percent-encodes a path segment or query value of a federation request (IDs, tokens).
pub fn encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes()).collect::<String>().replace('+', "%20")
}

/// A signed request to another server with the default time limit; the JSON answer.
/// `path` starts with `/_matrix/` and has its components percent-encoded.
pub async fn request<T: DeserializeOwned>(
    svc: &Services,
    destination: &ServerName,
    method: Method,
    path: &str,
    body: Option<&Value>,
) -> Result<T, FederationError> {
    request_with_timeout(svc, destination, method, path, body, REQUEST_TIMEOUT).await
}

/// Like `request`, with a time limit.
pub async fn request_with_timeout<T: DeserializeOwned>(
    svc: &Services,
    destination: &ServerName,
    method: Method,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<T, FederationError> {
    let response = send(svc, destination, method, path, body, timeout).await?;
    let bytes = response.bytes().await.map_err(|source| transfer_error(destination, source))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| FederationError::InvalidResponse { destination: destination.to_owned(), message: e.to_string() })
}

/// A signed request whose successful answer the caller reads itself (streamed media);
/// `timeout` limits the whole exchange, body included.
pub async fn send(
    svc: &Services,
    destination: &ServerName,
    method: Method,
    path: &str,
    body: Option<&Value>,
    timeout: Duration,
) -> Result<reqwest::Response, FederationError> {
    let client = &svc.federation.client;
    let route = client.route(destination).await?;
    let url = url::Url::parse(&format!("{}{path}", route.base)).map_err(|e| FederationError::Request(e.to_string()))?;
    // Sign the target exactly as it goes on the wire (after the URL parser's normalisation).
    let target = match url.query() {
        Some(query) => format!("{}?{query}", url.path()),
        None => url.path().to_owned(),
    };
    let content = body
        .map(|b| CanonicalJsonValue::try_from(b.clone()))
        .transpose()
        .map_err(|e| FederationError::Request(format!("body is not canonical JSON: {e}")))?;
    let origin = <&ServerName>::try_from(svc.config.server_name.as_str())
        .map_err(|e| FederationError::Request(e.to_string()))?;
    let authorization = super::xmatrix::sign_request(&svc.server_key, origin, destination, &method, &target, content)
        .map_err(|e| FederationError::Request(e.to_string()))?;
    let mut builder = route
        .http
        .request(method, url)
        .timeout(timeout)
        .header(reqwest::header::HOST, &route.host_header)
        .header(reqwest::header::AUTHORIZATION, authorization);
    if let Some(body) = body {
        builder = builder.json(body);
    }
    let response = builder.send().await.map_err(|source| {
        if source.is_connect() {
            client.forget(destination);
        }
        transfer_error(destination, source)
    })?;
    let status = response.status();
    if !status.is_success() {
        let bytes = response.bytes().await.map_err(|source| transfer_error(destination, source))?;
        let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        let text = |field: &str| body.get(field).and_then(Value::as_str).unwrap_or_default().to_owned();
        return Err(FederationError::Remote {
            destination: destination.to_owned(),
            status,
            errcode: text("errcode"),
            message: text("error"),
        });
    }
    Ok(response)
}

/// A failure while sending or reading: a timeout, or the destination could not be reached.
pub fn transfer_error(destination: &ServerName, source: reqwest::Error) -> FederationError {
    if source.is_timeout() {
        FederationError::Timeout { destination: destination.to_owned() }
    } else {
        FederationError::Unreachable { destination: destination.to_owned(), source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn remote(status: u16, errcode: &str) -> FederationError {
        FederationError::Remote {
            destination: "remote.org".try_into().unwrap(),
            status: StatusCode::from_u16(status).unwrap(),
            errcode: errcode.into(),
            message: "no".into(),
        }
    }

    #[test]
    fn remote_refusals_reach_clients_and_failures_are_502() {
        assert_eq!(Error::from(remote(403, "M_FORBIDDEN")).errcode(), "M_FORBIDDEN");
        assert_eq!(Error::from(remote(404, "M_NOT_FOUND")).errcode(), "M_NOT_FOUND");
        let status = |e: Error| match e {
            Error::Matrix { status, .. } => status.as_u16(),
            _ => 0,
        };
        assert_eq!(status(remote(404, "M_NOT_FOUND").into()), 404);
        // Our signature refused: not the client's fault; unknown codes and 5xx: a bad gateway.
        assert_eq!(status(remote(401, "M_UNAUTHORIZED").into()), 502);
        assert_eq!(status(remote(400, "M_WEIRD").into()), 502);
        assert_eq!(status(remote(500, "M_UNKNOWN").into()), 502);
        assert_eq!(status(FederationError::Timeout { destination: "remote.org".try_into().unwrap() }.into()), 502);
    }
}
