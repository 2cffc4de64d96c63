//! `FederationAuth`: the verified origin server of a signed request.
//!
//! The signature covers the JSON body, which extractors of the request head cannot read:
//! every federation route therefore goes through `buffer_body`, which reads the body once,
//! keeps a copy for `FederationAuth` and hands the request on intact (so a handler can take
//! `FederationAuth` and then `extract::Json`).

use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use ruma::OwnedServerName;

use crate::AppState;
use crate::error::Error;

/// The origin of a request whose `X-Matrix` signature verified (401 `M_UNAUTHORIZED`
/// otherwise).
pub struct FederationAuth(pub OwnedServerName);

#[derive(Clone)]
struct BufferedBody(Bytes);

pub async fn buffer_body(req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let limit_aware = Request::from_parts(parts.clone(), body);
    let bytes = match Bytes::from_request(limit_aware, &()).await {
        Ok(bytes) => bytes,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return Error::too_large("Request body too large").into_response();
        }
        Err(e) => return Error::not_json(e.body_text()).into_response(),
    };
    parts.extensions.insert(BufferedBody(bytes.clone()));
    next.run(Request::from_parts(parts, axum::body::Body::from(bytes))).await
}

impl FromRequestParts<AppState> for FederationAuth {
    type Rejection = Error;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Error> {
        let body = parts
            .extensions
            .get::<BufferedBody>()
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("FederationAuth on a route outside api::federation")))?
            .0
            .clone();
        let uri = parts.extensions.get::<OriginalUri>().map_or(&parts.uri, |original| &original.0);
        let target = uri.path_and_query().map_or(uri.path(), |pq| pq.as_str());
        let origin =
            crate::federation::xmatrix::verify_request(state, &parts.method, target, &parts.headers, &body).await?;
        Ok(FederationAuth(origin))
    }
}
