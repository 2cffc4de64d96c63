//! Single sign-on with OpenID Connect, played the way Element does it: `/login` lists the
//! provider, the browser follows `/login/sso/redirect` to the provider and back to the
//! callback, and the client exchanges the `loginToken` at `/login`. The provider is a small
//! fake served here on loopback, signing its ID tokens with an Ed25519 key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use openidconnect::core::{
    CoreEdDsaPrivateSigningKey, CoreIdToken, CoreIdTokenClaims, CoreJsonWebKeySet, CoreJwsSigningAlgorithm,
};
use openidconnect::{
    Audience, EmptyAdditionalClaims, EndUserName, EndUserUsername, IssuerUrl, Nonce, PrivateSigningKey, StandardClaims,
    SubjectIdentifier,
};
use plexus::config::{Config, OidcProviderConfig};
use reqwest::Method;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::harness::{TestServer, enc};

const CLIENT_ID: &str = "plexus-test";
const CLIENT_SECRET: &str = "s3cret";
const CALLBACK: &str = "/_synapse/client/oidc/callback";
const CLIENT_URL: &str = "https://client.test/sso-done";

/// What the fake provider does, and what it saw.
#[derive(Default)]
struct IdpState {
    /// The account logging in: sub, preferred_username, name.
    user: (String, String, String),
    /// Keep the profile claims out of the ID token (only `/userinfo` has them).
    profile_only_in_userinfo: bool,
    /// Put this nonce in ID tokens instead of the one asked for.
    wrong_nonce: Option<String>,
    /// code -> (nonce, PKCE challenge, redirect_uri)
    codes: HashMap<String, (String, String, String)>,
    /// The query of the last authorization request.
    last_authorize: HashMap<String, String>,
    access_tokens: HashMap<String, String>,
}

#[derive(Clone)]
struct Idp {
    issuer: String,
    key: Arc<CoreEdDsaPrivateSigningKey>,
    state: Arc<Mutex<IdpState>>,
}

impl Idp {
    async fn start() -> Idp {
        Self::start_on(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap()).await
    }

    async fn start_on(listener: tokio::net::TcpListener) -> Idp {
        let issuer = format!("http://{}", listener.local_addr().unwrap());
        let pem = rcgen::KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap().serialize_pem();
        let key =
            CoreEdDsaPrivateSigningKey::from_ed25519_pem(&pem, Some(openidconnect::JsonWebKeyId::new("k1".into())))
                .unwrap();
        let state =
            IdpState { user: ("sub-alice".into(), "Alice".into(), "Alice Liddell".into()), ..Default::default() };
        let idp = Idp { issuer, key: Arc::new(key), state: Arc::new(Mutex::new(state)) };
        let app = Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/authorize", get(authorize))
            .route("/token", post(token))
            .route("/userinfo", get(userinfo))
            .with_state(idp.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        idp
    }

    fn set(&self, f: impl FnOnce(&mut IdpState)) {
        f(&mut self.state.lock().unwrap())
    }
}

async fn discovery(State(idp): State<Idp>) -> Json<Value> {
    let i = &idp.issuer;
    Json(json!({
        "issuer": i,
        "authorization_endpoint": format!("{i}/authorize"),
        "token_endpoint": format!("{i}/token"),
        "userinfo_endpoint": format!("{i}/userinfo"),
        "jwks_uri": format!("{i}/jwks"),
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["EdDSA"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic"],
        "code_challenge_methods_supported": ["S256"],
    }))
}

async fn jwks(State(idp): State<Idp>) -> Json<CoreJsonWebKeySet> {
    Json(CoreJsonWebKeySet::new(vec![idp.key.as_verification_key()]))
}

/// Logs the user in at once and sends the browser back with a code.
async fn authorize(State(idp): State<Idp>, Query(q): Query<HashMap<String, String>>) -> Response {
    let code = format!("code-{}", rand_hex());
    let redirect = q["redirect_uri"].clone();
    let mut s = idp.state.lock().unwrap();
    s.codes.insert(code.clone(), (q["nonce"].clone(), q["code_challenge"].clone(), redirect.clone()));
    s.last_authorize = q.clone();
    let to = format!("{redirect}?code={code}&state={}", enc(&q["state"]));
    (StatusCode::FOUND, [(header::LOCATION, to)]).into_response()
}

async fn token(State(idp): State<Idp>, headers: HeaderMap, body: String) -> Response {
    let f: HashMap<String, String> = url::form_urlencoded::parse(body.as_bytes()).into_owned().collect();
    let basic = format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:{CLIENT_SECRET}")));
    if headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) != Some(basic.as_str()) {
        return (StatusCode::UNAUTHORIZED, Json(json!({ "error": "invalid_client" }))).into_response();
    }
    let mut s = idp.state.lock().unwrap();
    let Some((nonce, challenge, redirect)) = s.codes.remove(&f["code"]) else {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant" }))).into_response();
    };
    let verified = URL_SAFE_NO_PAD.encode(Sha256::digest(f["code_verifier"].as_bytes())) == challenge;
    if !verified || f["redirect_uri"] != redirect || f["grant_type"] != "authorization_code" {
        return (StatusCode::BAD_REQUEST, Json(json!({ "error": "invalid_grant" }))).into_response();
    }
    let (sub, username, name) = s.user.clone();
    let mut standard = StandardClaims::new(SubjectIdentifier::new(sub.clone()));
    if !s.profile_only_in_userinfo {
        standard = standard
            .set_preferred_username(Some(EndUserUsername::new(username)))
            .set_name(Some(EndUserName::new(name).into()));
    }
    let now = chrono::Utc::now();
    let claims = CoreIdTokenClaims::new(
        IssuerUrl::new(idp.issuer.clone()).unwrap(),
        vec![Audience::new(CLIENT_ID.into())],
        now + chrono::Duration::seconds(300),
        now,
        standard,
        EmptyAdditionalClaims {},
    )
    .set_nonce(Some(Nonce::new(s.wrong_nonce.clone().unwrap_or(nonce))));
    let id_token = CoreIdToken::new(claims, idp.key.as_ref(), CoreJwsSigningAlgorithm::EdDsa, None, None).unwrap();
    let access_token = format!("at-{}", rand_hex());
    s.access_tokens.insert(access_token.clone(), sub);
    Json(json!({ "access_token": access_token, "token_type": "Bearer", "expires_in": 300, "id_token": id_token }))
        .into_response()
}

async fn userinfo(State(idp): State<Idp>, headers: HeaderMap) -> Response {
    let s = idp.state.lock().unwrap();
    let bearer =
        headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
    match bearer.and_then(|t| s.access_tokens.get(t)) {
        Some(_) => {
            let (sub, username, name) = &s.user;
            Json(json!({ "sub": sub, "preferred_username": username, "name": name })).into_response()
        }
        None => StatusCode::UNAUTHORIZED.into_response(),
    }
}

fn rand_hex() -> String {
    let bytes: [u8; 12] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn provider(issuer: &str) -> OidcProviderConfig {
    OidcProviderConfig {
        id: "test-idp".into(),
        name: "Test IdP".into(),
        issuer: issuer.into(),
        client_id: CLIENT_ID.into(),
        client_secret: CLIENT_SECRET.into(),
        scopes: vec!["openid".into(), "profile".into()],
        localpart_template: "{{ user.preferred_username }}".into(),
        display_name_template: "{{ user.name }}".into(),
        allow_existing_users: false,
    }
}

async fn server_for(issuer: &str, adjust: impl FnOnce(&mut Config)) -> TestServer {
    let issuer = issuer.to_owned();
    TestServer::start_with(move |c| {
        c.sso.providers.push(provider(&issuer));
        c.sso.client_whitelist = vec![CLIENT_URL.into()];
        adjust(c);
    })
    .await
}

/// The browser: no redirects followed by itself.
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

fn location(r: &reqwest::Response) -> String {
    r.headers()[header::LOCATION].to_str().unwrap().to_owned()
}

/// Where the browser lands after the callback.
enum Landing {
    /// Redirected to the client: the login token.
    Client(String),
    /// A page from the callback (confirmation or error), with its status.
    Page(StatusCode, String),
}

/// Plays the browser from `/login/sso/redirect` to the answer of the callback.
async fn sso_browse(server: &TestServer, path: &str, redirect_url: &str) -> Landing {
    let b = browser();
    let r = b.get(format!("{}{path}?redirectUrl={}", server.base, enc(redirect_url))).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND, "{:?}", r.text().await);
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let r = b.get(location(&r)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let callback = location(&r);
    assert!(callback.starts_with(&format!("{}{CALLBACK}?", server.base)), "{callback}");
    let r = b.get(callback).header(header::COOKIE, cookie).send().await.unwrap();
    if r.status() == StatusCode::FOUND {
        let to = url::Url::parse(&location(&r)).unwrap();
        assert!(to.as_str().starts_with(redirect_url), "{to}");
        let token = to.query_pairs().find(|(k, _)| k == "loginToken").map(|(_, v)| v.into_owned()).unwrap();
        return Landing::Client(token);
    }
    Landing::Page(r.status(), r.text().await.unwrap())
}

async fn sso_login_token(server: &TestServer, path: &str) -> String {
    match sso_browse(server, path, CLIENT_URL).await {
        Landing::Client(token) => token,
        Landing::Page(status, body) => panic!("no redirect to the client: {status} {body}"),
    }
}

async fn token_login(server: &TestServer, token: &str) -> crate::harness::Reply {
    let body = json!({ "type": "m.login.token", "token": token });
    server.request(Method::POST, "/_matrix/client/v3/login", None, Some(&body)).await
}

const REDIRECT: &str = "/_matrix/client/v3/login/sso/redirect";

#[tokio::test]
async fn sso_login_creates_the_user_and_maps_it_again() {
    let idp = Idp::start().await;
    let server = server_for(&idp.issuer, |_| {}).await;

    let flows = server.get("/_matrix/client/v3/login").await.ok();
    let types: Vec<&str> = flows["flows"].as_array().unwrap().iter().map(|f| f["type"].as_str().unwrap()).collect();
    assert_eq!(types, ["m.login.password", "m.login.sso", "m.login.token", "m.login.application_service"]);
    assert_eq!(flows["flows"][1]["identity_providers"], json!([{ "id": "test-idp", "name": "Test IdP" }]));

    let token = sso_login_token(&server, REDIRECT).await;
    let asked = idp.state.lock().unwrap().last_authorize.clone();
    assert_eq!(asked["client_id"], CLIENT_ID);
    assert_eq!(asked["response_type"], "code");
    assert_eq!(asked["scope"], "openid profile");
    assert_eq!(asked["code_challenge_method"], "S256");
    assert_eq!(asked["redirect_uri"], format!("{}{CALLBACK}", server.base));

    let login = token_login(&server, &token).await.ok();
    let alice = format!("@alice:{}", server.server_name);
    assert_eq!(login["user_id"], alice.as_str());
    let at = login["access_token"].as_str().unwrap();
    let me = server.request(Method::GET, "/_matrix/client/v3/account/whoami", Some(at), None).await.ok();
    assert_eq!((me["user_id"].as_str(), &me["device_id"]), (Some(alice.as_str()), &login["device_id"]));
    let profile = server.get(&format!("/_matrix/client/v3/profile/{}", enc(&alice))).await.ok();
    assert_eq!(profile["displayname"], "Alice Liddell");

    // Single use, and unknown tokens are refused alike.
    token_login(&server, &token).await.assert_error(403, "M_FORBIDDEN");
    token_login(&server, "plx_bogus").await.assert_error(403, "M_FORBIDDEN");

    // The same subject logs in again through the provider's own path: same user, new device,
    // even after the provider renamed the account (the link is by subject).
    idp.set(|s| s.user.1 = "alice-renamed".into());
    let token2 = sso_login_token(&server, &format!("{REDIRECT}/test-idp")).await;
    let login2 = token_login(&server, &token2).await.ok();
    assert_eq!(login2["user_id"], alice.as_str());
    assert_ne!(login2["device_id"], login["device_id"]);

    // An unknown provider, a missing redirectUrl.
    server.get(&format!("{REDIRECT}/nope?redirectUrl={}", enc(CLIENT_URL))).await.assert_error(404, "M_NOT_FOUND");
    server.get(REDIRECT).await.assert_error(400, "M_MISSING_PARAM");
}

#[tokio::test]
async fn userinfo_supplies_claims_missing_from_the_id_token() {
    let idp = Idp::start().await;
    idp.set(|s| {
        s.profile_only_in_userinfo = true;
        s.user = ("sub-bob".into(), "Bob".into(), "Bob Builder".into());
    });
    let server = server_for(&idp.issuer, |_| {}).await;
    let token = sso_login_token(&server, REDIRECT).await;
    assert_eq!(token_login(&server, &token).await.ok()["user_id"], format!("@bob:{}", server.server_name));
}

#[tokio::test]
async fn bad_state_nonce_or_browser_are_refused() {
    let idp = Idp::start().await;
    let server = server_for(&idp.issuer, |_| {}).await;
    let b = browser();

    // A state this server never issued.
    let r = b.get(format!("{}{CALLBACK}?code=x&state=forged", server.base)).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FORBIDDEN);

    // A callback reaching another browser (no cookie) is refused, and its state is spent.
    let r = b.get(format!("{}{REDIRECT}?redirectUrl={}", server.base, enc(CLIENT_URL))).send().await.unwrap();
    let r = b.get(location(&r)).send().await.unwrap();
    let callback = location(&r);
    assert_eq!(b.get(&callback).send().await.unwrap().status(), StatusCode::FORBIDDEN);

    // An ID token with another nonce.
    idp.set(|s| s.wrong_nonce = Some("replayed".into()));
    match sso_browse(&server, REDIRECT, CLIENT_URL).await {
        Landing::Page(status, body) => assert!(status == StatusCode::FORBIDDEN && body.contains("nonce"), "{body}"),
        Landing::Client(_) => panic!("a wrong nonce was accepted"),
    }
}

#[tokio::test]
async fn provider_down_at_start_is_discovered_later() {
    // Reserve a port for the provider, and free it before the server starts.
    let port = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().port();
    let server = server_for(&format!("http://127.0.0.1:{port}"), |_| {}).await;
    let flows = server.get("/_matrix/client/v3/login").await.ok();
    assert_eq!(flows["flows"][1]["type"], "m.login.sso");
    server.get(&format!("{REDIRECT}?redirectUrl={}", enc(CLIENT_URL))).await.assert_error(502, "M_UNKNOWN");

    let idp = Idp::start_on(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap()).await;
    let token = sso_login_token(&server, REDIRECT).await;
    assert_eq!(token_login(&server, &token).await.ok()["user_id"], format!("@alice:{}", server.server_name));
    drop(idp);
}

#[tokio::test]
async fn other_clients_get_a_confirmation_page() {
    let idp = Idp::start().await;
    let server = server_for(&idp.issuer, |_| {}).await;
    let elsewhere = "https://elsewhere.test/done";
    let Landing::Page(status, body) = sso_browse(&server, REDIRECT, elsewhere).await else {
        panic!("a client outside the whitelist was redirected to without asking");
    };
    assert_eq!(status, StatusCode::OK);
    let href = body.split("href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    let token = url::Url::parse(&href).unwrap().query_pairs().find(|(k, _)| k == "loginToken").unwrap().1.into_owned();
    assert!(href.starts_with(elsewhere));
    token_login(&server, &token).await.ok();
}

#[tokio::test]
async fn existing_accounts_are_not_taken_unless_allowed() {
    let idp = Idp::start().await;
    let server = server_for(&idp.issuer, |_| {}).await;
    server.register("alice").await;
    match sso_browse(&server, REDIRECT, CLIENT_URL).await {
        Landing::Page(status, body) => assert!(status == StatusCode::BAD_REQUEST && body.contains("another account")),
        Landing::Client(_) => panic!("SSO took over an existing account"),
    }

    let server = server_for(&idp.issuer, |c| c.sso.providers[0].allow_existing_users = true).await;
    let alice = server.register("alice").await;
    let token = sso_login_token(&server, REDIRECT).await;
    assert_eq!(token_login(&server, &token).await.ok()["user_id"], alice.user_id.as_str());
}

#[tokio::test]
async fn password_login_can_be_turned_off() {
    let idp = Idp::start().await;
    let server = server_for(&idp.issuer, |c| c.password_login_enabled = false).await;
    server.register("carol").await;
    let flows = server.get("/_matrix/client/v3/login").await.ok();
    assert!(flows["flows"].as_array().unwrap().iter().all(|f| f["type"] != "m.login.password"), "{flows}");
    server.login("carol", "password").await.assert_error(400, "M_UNKNOWN");
}

#[tokio::test]
async fn sso_users_confirm_sensitive_actions_by_signing_in_again() {
    let idp = Idp::start().await;
    let server = server_for(&idp.issuer, |_| {}).await;
    let first = token_login(&server, &sso_login_token(&server, REDIRECT).await).await.ok();
    let second = token_login(&server, &sso_login_token(&server, REDIRECT).await).await.ok();
    let at = first["access_token"].as_str().unwrap();
    let path = format!("/_matrix/client/v3/devices/{}", enc(second["device_id"].as_str().unwrap()));

    // No password: the only flow is SSO.
    let r = server.request(Method::DELETE, &path, Some(at), Some(&json!({}))).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    assert_eq!(r.body["flows"], json!([{ "stages": ["m.login.sso"] }]));
    let session = r.body["session"].as_str().unwrap().to_owned();
    // Claiming the stage without the browser proves nothing.
    let claim = json!({ "auth": { "type": "m.login.sso", "session": session } });
    let r = server.request(Method::DELETE, &path, Some(at), Some(&claim)).await;
    assert_eq!((r.status, &r.body["completed"]), (StatusCode::UNAUTHORIZED, &json!([])), "{r:?}");

    // The fallback page offers the linked provider; signing in there completes the stage.
    let b = browser();
    let fallback = format!("{}/_matrix/client/v3/auth/m.login.sso/fallback/web?session={session}", server.base);
    let page = b.get(&fallback).send().await.unwrap().text().await.unwrap();
    let href = page.split("href=\"").nth(1).unwrap().split('"').next().unwrap().replace("&amp;", "&");
    assert!(page.contains("Test IdP") && href.contains("idp_id=test-idp"), "{page}");
    let r = b.get(format!("{fallback}&idp_id=test-idp")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::FOUND);
    let cookie = r.headers()[header::SET_COOKIE].to_str().unwrap().split(';').next().unwrap().to_owned();
    let r = b.get(location(&r)).send().await.unwrap();
    let r = b.get(location(&r)).header(header::COOKIE, cookie).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.text().await.unwrap().contains("authDone"));

    let resume = json!({ "auth": { "session": session } });
    server.request(Method::DELETE, &path, Some(at), Some(&resume)).await.ok();
    let devices = server.request(Method::GET, "/_matrix/client/v3/devices", Some(at), None).await.ok();
    assert_eq!(devices["devices"].as_array().unwrap().len(), 1);

    // A session of another user cannot be completed by this one's provider login.
    let bob = server.register("bob").await;
    let r = bob.delete(&format!("/_matrix/client/v3/devices/{}", enc(&bob.device_id)), json!({})).await;
    assert_eq!(r.body["flows"], json!([{ "stages": ["m.login.password"] }]));
    let bob_session = r.body["session"].as_str().unwrap();
    let fallback = format!("{}/_matrix/client/v3/auth/m.login.sso/fallback/web?session={bob_session}", server.base);
    let r = b.get(format!("{fallback}&idp_id=test-idp")).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND, "bob has no link to the provider");
}

#[tokio::test]
async fn a_session_can_make_a_login_token_for_another_device_when_enabled() {
    let server = TestServer::start_with(|c| c.login_via_existing_session = true).await;
    let flows = server.get("/_matrix/client/v3/login").await.ok();
    assert_eq!(flows["flows"][1], json!({ "type": "m.login.token", "get_login_token": true }));
    let dave = server.register("dave").await;
    let caps = dave.get("/_matrix/client/v3/capabilities").await.ok();
    assert_eq!(caps["capabilities"]["m.get_login_token"]["enabled"], true);

    // Always behind UIA.
    let r = dave.post("/_matrix/client/v1/login/get_token", json!({})).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{r:?}");
    let auth = json!({ "auth": {
        "type": "m.login.password", "session": r.body["session"],
        "identifier": { "type": "m.id.user", "user": "dave" }, "password": "password",
    }});
    let answer = dave.post("/_matrix/client/v1/login/get_token", auth).await.ok();
    assert_eq!(answer["expires_in_ms"], 120_000);
    let token = answer["login_token"].as_str().unwrap();
    let login = token_login(&server, token).await.ok();
    assert_eq!(login["user_id"], dave.user_id.as_str());
    assert_ne!(login["device_id"], dave.device_id.as_str());
    token_login(&server, token).await.assert_error(403, "M_FORBIDDEN");

    // Off by default.
    let server = TestServer::start().await;
    let erin = server.register("erin").await;
    erin.post("/_matrix/client/v1/login/get_token", json!({})).await.assert_error(404, "M_UNRECOGNIZED");
    let flows = server.get("/_matrix/client/v3/login").await.ok();
    assert_eq!(flows["flows"], json!([{ "type": "m.login.password" }, { "type": "m.login.application_service" }]));
}
