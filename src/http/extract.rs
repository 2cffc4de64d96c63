//! Request extractors that fail with the spec's errors: JSON bodies (`M_NOT_JSON`,
//! `M_BAD_JSON`, `M_TOO_LARGE`), query strings and path parameters (`M_INVALID_PARAM`),
//! and the access token (`M_MISSING_TOKEN`, `M_UNKNOWN_TOKEN`).

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequest, FromRequestParts, MatchedPath, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use bytes::Bytes;
use serde::de::DeserializeOwned;

use crate::AppState;
use crate::accounts::{self, Identity};
use crate::error::Error;

/// A JSON request body. An empty body reads as `{}`.
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = Error;

    async fn from_request(req: Request, state: &S) -> Result<Self, Error> {
        let bytes = Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                Error::too_large("Request body too large")
            } else {
                Error::not_json(e.body_text())
            }
        })?;
        parse_json(&bytes).map(Json)
    }
}

/// Parses a body as JSON (`M_NOT_JSON`), then as `T` (`M_BAD_JSON`).
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, Error> {
    let bytes: &[u8] = if bytes.iter().all(u8::is_ascii_whitespace) { b"{}" } else { bytes };
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Error::not_json(format!("Content not JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| Error::bad_json(e.to_string()))
}

/// Query parameters.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Query(q.0))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// Path parameters.
pub struct Path<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for Path<T> {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Error> {
        axum::extract::Path::<T>::from_request_parts(parts, state)
            .await
            .map(|p| Path(p.0))
            .map_err(|e| Error::invalid_param(e.body_text()))
    }
}

/// The authenticated user of a request (access token in the `Authorization: Bearer`
/// header or, deprecated, the `access_token` query parameter). Guests only reach the
/// endpoints `guest_access` opens to them.
pub struct Auth(pub Identity);

impl FromRequestParts<AppState> for Auth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let token = access_token(parts).ok_or_else(Error::missing_token)?;
        let identity = authenticate(parts, state, &token).await?;
        if identity.is_guest {
            let route = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str);
            super::guest_access::check(&parts.method, route, parts.uri.path())?;
        }
        Ok(Auth(identity))
    }
}

/// An authenticated server admin (the admin API); other users get 403 `M_FORBIDDEN`.
pub struct Admin(pub Identity);

impl FromRequestParts<AppState> for Admin {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let Auth(identity) = Auth::from_request_parts(parts, state).await?;
        if !identity.is_admin {
            return Err(Error::forbidden("You are not a server admin"));
        }
        Ok(Admin(identity))
    }
}

/// Like `Auth`, for endpoints that also answer without a token.
pub struct MaybeAuth(pub Option<Identity>);

impl FromRequestParts<AppState> for MaybeAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        match access_token(parts) {
            None => Ok(MaybeAuth(None)),
            Some(token) => authenticate(parts, state, &token).await.map(|i| MaybeAuth(Some(i))),
        }
    }
}

/// Resolves the token (an appservice's as_token, or a user's access token) and records the
/// device's activity (throttled, see `SessionTracker`).
async fn authenticate(parts: &Parts, state: &AppState, token: &str) -> Result<Identity, Error> {
    let identity = match state.appservices.by_token(token) {
        Some(appservice) => {
            let (user_id, device_id) = (query_param(parts, "user_id"), query_param(parts, "device_id"));
            accounts::authenticate_appservice(&state.db, appservice, user_id.as_deref(), device_id.as_deref()).await?
        }
        None => accounts::authenticate(state, token).await?,
    };
    // A locked account may only log out (spec "Account locking").
    let path = parts.uri.path();
    if identity.locked && !path.ends_with("/logout") && !path.ends_with("/logout/all") {
        return Err(Error::user_locked());
    }
    if !identity.device_id.is_empty() {
        state.sessions.seen(&state.db, &identity.user_id, &identity.device_id, client_ip(parts)).await;
    }
    Ok(identity)
}

/// The raw access token of a request, without resolving it (for `POST /register`, where an
/// appservice names users that do not exist yet).
pub struct Token(pub Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Token {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(Token(access_token(parts)))
    }
}

fn access_token(parts: &Parts) -> Option<String> {
    if let Some(value) = parts.headers.get(axum::http::header::AUTHORIZATION) {
        let value = value.to_str().ok()?;
        return value.strip_prefix("Bearer ").map(|t| t.trim().to_owned());
    }
    query_param(parts, "access_token")
}

fn query_param(parts: &Parts, name: &str) -> Option<String> {
    let query = parts.uri.query()?;
    url::form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v.into_owned())
}

/// The address of the client (the peer of the TCP connection).
pub struct ClientIp(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Error> {
        Ok(ClientIp(client_ip(parts)))
    }
}

fn client_ip(parts: &Parts) -> IpAddr {
    parts.extensions.get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip())
}
