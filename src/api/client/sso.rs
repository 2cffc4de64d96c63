//! Single sign-on in the browser: `GET /login/sso/redirect[/{idpId}]` sends the user to an
//! identity provider, whose answer comes back to the OpenID Connect callback; the browser
//! then goes on to the client's `redirectUrl` with a `loginToken` (see `crate::sso`).

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use super::v3;
use crate::AppState;
use crate::error::{Error, Result};
use crate::http::extract::{Path, Query};
use crate::sso::{self, CALLBACK_PATH, CallbackParams, Completed};
use crate::storage::sso::Purpose;

/// Binds a login in progress to the browser that started it (against login CSRF).
const COOKIE: &str = "plexus_oidc_session";

pub fn router() -> Router<AppState> {
    Router::new()
        .route(v3!("/login/sso/redirect"), get(redirect))
        .route(v3!("/login/sso/redirect/{idp_id}"), get(redirect_to))
        .route(v3!("/auth/m.login.sso/fallback/web"), get(reauth_fallback))
        // The literal `sso::CALLBACK_PATH` (written out for the route table check in tests/it/authz.rs).
        .route("/_synapse/client/oidc/callback", get(callback))
}

/// The `m.login.sso` entry of `GET /login` (none without providers).
pub fn login_flow(state: &AppState) -> Option<Value> {
    let providers: Vec<Value> = state.sso.providers().map(|p| json!({ "id": p.id, "name": p.name })).collect();
    (!providers.is_empty()).then(|| json!({ "type": "m.login.sso", "identity_providers": providers }))
}

#[derive(Deserialize)]
struct RedirectQuery {
    #[serde(rename = "redirectUrl")]
    redirect_url: Option<String>,
}

async fn redirect(State(state): State<AppState>, Query(q): Query<RedirectQuery>) -> Result<Response> {
    let redirect_url = q.redirect_url.ok_or_else(|| Error::missing_param("Missing redirectUrl"))?;
    let providers: Vec<_> = state.sso.providers().collect();
    match providers.as_slice() {
        [] => Err(Error::unrecognized()),
        [only] => {
            let id = only.id.clone();
            start(&state, &id, Purpose::Login { redirect_url }).await
        }
        // More than one: the user chooses.
        many => {
            let items: String = many
                .iter()
                .map(|p| {
                    let query = url::form_urlencoded::Serializer::new(String::new())
                        .append_pair("redirectUrl", &redirect_url)
                        .finish();
                    // Relative to .../login/sso/redirect; provider IDs need no escaping in a path.
                    let href = format!("redirect/{}?{query}", p.id);
                    format!("<li><a href=\"{}\">{}</a></li>", escape(&href), escape(&p.name))
                })
                .collect();
            Ok(page(StatusCode::OK, "Choose how to sign in", &format!("<ul>{items}</ul>")))
        }
    }
}

async fn redirect_to(
    State(state): State<AppState>,
    Path(idp_id): Path<String>,
    Query(q): Query<RedirectQuery>,
) -> Result<Response> {
    let redirect_url = q.redirect_url.ok_or_else(|| Error::missing_param("Missing redirectUrl"))?;
    start(&state, &idp_id, Purpose::Login { redirect_url }).await
}

#[derive(Deserialize)]
struct FallbackQuery {
    session: String,
    idp_id: Option<String>,
}

/// The fallback page of the `m.login.sso` UIA stage: the user signs in again at a provider
/// their account is linked to (chosen on this page, then `?idp_id=` starts the login).
async fn reauth_fallback(State(state): State<AppState>, Query(q): Query<FallbackQuery>) -> Result<Response> {
    let Some(user) = state.uia.user_of(&state.db, &q.session).await? else {
        return Ok(page(StatusCode::BAD_REQUEST, "Unknown session", "This authentication session has expired."));
    };
    let providers = sso::linked_providers(&state, &user).await?;
    if let Some(idp_id) = &q.idp_id {
        if !providers.iter().any(|p| &p.id == idp_id) {
            return Err(Error::not_found("Your account is not linked to that identity provider"));
        }
        return start(&state, idp_id, Purpose::Reauthenticate { ui_auth_session: q.session }).await;
    }
    let items: String = providers
        .iter()
        .map(|p| {
            let query = url::form_urlencoded::Serializer::new(String::new())
                .append_pair("session", &q.session)
                .append_pair("idp_id", &p.id)
                .finish();
            format!("<li><a href=\"?{}\">{}</a></li>", escape(&query), escape(&p.name))
        })
        .collect();
    let body = format!(
        "<p>To continue, confirm who you are ({}) by signing in again with:</p><ul>{items}</ul>",
        escape(user.as_str())
    );
    Ok(page(StatusCode::OK, "Confirm your identity", &body))
}

async fn start(state: &AppState, idp_id: &str, purpose: Purpose) -> Result<Response> {
    let started = sso::start(state, idp_id, purpose).await?;
    let secure = if state.config.base_url().starts_with("https://") { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={}; Path={CALLBACK_PATH}; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        started.state,
        sso::PENDING_LIFETIME_MS / 1000
    );
    let mut response = found(started.provider_url.as_str())?;
    response.headers_mut().insert(header::SET_COOKIE, header_value(&cookie)?);
    Ok(response)
}

async fn callback(State(state): State<AppState>, headers: HeaderMap, Query(params): Query<CallbackParams>) -> Response {
    let browser_state = cookie(&headers, COOKIE);
    let done = match sso::complete(&state, params, browser_state.as_deref()).await {
        Ok(done) => done,
        Err(Error::Matrix { status, message, .. }) => return page(status, "Sign-in failed", &escape(&message)),
        Err(other) => return other.into_response(),
    };
    let mut response = match done {
        Completed::Login { redirect_url, whitelisted: true } => match found(redirect_url.as_str()) {
            Ok(r) => r,
            Err(e) => return e.into_response(),
        },
        Completed::Login { redirect_url, whitelisted: false } => {
            let host = redirect_url.host_str().unwrap_or(redirect_url.scheme()).to_owned();
            let body = format!(
                "<p>You are signed in. Continue to <b>{}</b> only if you started this sign-in there: it will get \
                 access to your account.</p><p><a href=\"{}\">Continue</a></p>",
                escape(&host),
                escape(redirect_url.as_str())
            );
            page(StatusCode::OK, "Continue to your client", &body)
        }
        Completed::Reauthenticated => auth_done_page(),
    };
    // The cookie has done its job.
    let expire = format!("{COOKIE}=; Path={CALLBACK_PATH}; Max-Age=0; HttpOnly; SameSite=Lax");
    if let Ok(v) = HeaderValue::from_str(&expire) {
        response.headers_mut().insert(header::SET_COOKIE, v);
    }
    response
}

/// The end of a UIA fallback: tells the client (the spec's `onAuthDone` or an `authDone`
/// message to the opener), which then retries its request with the session.
fn auth_done_page() -> Response {
    const SCRIPT: &str = "if (window.onAuthDone) { window.onAuthDone(); } \
        else if (window.opener && window.opener.postMessage) { window.opener.postMessage(\"authDone\", \"*\"); }";
    let hash = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(SCRIPT));
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Authentication done</title></head>\
         <body><h1>Authentication done</h1><p>You can close this window and go back to your client.</p>\
         <script>{SCRIPT}</script></body></html>"
    );
    let csp = format!("default-src 'none'; script-src 'sha256-{hash}'; frame-ancestors 'none'");
    let mut response = (StatusCode::OK, Html(html)).into_response();
    if let Ok(v) = HeaderValue::from_str(&csp) {
        response.headers_mut().insert(header::CONTENT_SECURITY_POLICY, v);
    }
    response
}

fn found(location: &str) -> Result<Response> {
    Ok((StatusCode::FOUND, [(header::LOCATION, header_value(location)?)]).into_response())
}

fn header_value(v: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(v).map_err(|_| Error::invalid_param("redirectUrl cannot be put in a header"))
}

/// A cookie sent by the browser.
fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned())
}

/// A small HTML page; `body` is already escaped. Nothing on it may be framed or run scripts.
fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{0}</title></head>\
         <body><h1>{0}</h1>{body}</body></html>",
        escape(title)
    );
    let csp = HeaderValue::from_static("default-src 'none'; frame-ancestors 'none'");
    (status, [(header::CONTENT_SECURITY_POLICY, csp)], Html(html)).into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_and_escaping() {
        let mut headers = HeaderMap::new();
        headers.insert(header::COOKIE, HeaderValue::from_static("a=1; plexus_oidc_session=xyz; b=2"));
        assert_eq!(cookie(&headers, COOKIE).as_deref(), Some("xyz"));
        assert_eq!(cookie(&headers, "c"), None);
        assert_eq!(escape("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }
}
