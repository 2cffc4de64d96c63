//! Single sign-on through OpenID Connect providers: the authorization code flow with PKCE,
//! ID tokens checked by `openidconnect` (signature against the provider's JWKS, issuer,
//! audience, nonce, expiry), claims mapped to a local account, and a login token for the
//! client at the end (`accounts::login_tokens`).
//!
//! A provider is discovered on first use, not at start: it may be down while Plexus starts.
//! Its metadata is cached for an hour; a failed discovery is simply tried again by the next
//! login, and a stale copy is kept while the provider cannot be reached.

pub mod template;

use std::sync::Weak;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::StatusCode;
use openidconnect::core::{CoreAuthenticationFlow, CoreClient, CoreProviderMetadata};
use openidconnect::{
    AccessToken, AuthorizationCode, ClaimsVerificationError, ClientId, ClientSecret, CsrfToken, EndpointMaybeSet,
    EndpointNotSet, EndpointSet, IssuerUrl, Nonce, OAuth2TokenResponse, PkceCodeChallenge, PkceCodeVerifier,
    RedirectUrl, RequestTokenError, Scope, TokenResponse,
};
use ruma::{OwnedUserId, UserId};
use serde_json::{Map, Value};
use tokio::sync::Mutex;
use url::Url;

use crate::Services;
use crate::accounts::{self, login_tokens};
use crate::config::{Config, OidcProviderConfig};
use crate::error::{Error, Result};
use crate::storage::sso::Purpose;
use crate::storage::{self, now_ms};
use template::Template;

/// Where providers send the browser back (Synapse's path, so that client registrations made
/// at a provider for Synapse keep working).
pub const CALLBACK_PATH: &str = "/_synapse/client/oidc/callback";

/// How long a user has to log in at the provider.
pub const PENDING_LIFETIME_MS: i64 = 10 * 60 * 1000;

const METADATA_MAX_AGE: Duration = Duration::from_secs(3600);
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A client of a discovered provider: authorization and token endpoints known, userinfo
/// endpoint if the provider has one.
type Client =
    CoreClient<EndpointSet, EndpointNotSet, EndpointNotSet, EndpointNotSet, EndpointMaybeSet, EndpointMaybeSet>;

pub struct Sso {
    providers: Vec<Provider>,
    http: reqwest::Client,
    callback_url: RedirectUrl,
}

struct Provider {
    config: OidcProviderConfig,
    localpart: Template,
    display_name: Template,
    discovered: Mutex<Option<(CoreProviderMetadata, Instant)>>,
}

/// Where to send the browser to log in, and the state the callback will carry.
pub struct Redirect {
    pub provider_url: Url,
    pub state: String,
}

/// What the provider sent back to the callback.
#[derive(Debug, serde::Deserialize)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<String>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// What a finished login at a provider did.
pub enum Completed {
    /// A client login: the client's redirect URL with `loginToken` added, and whether it may
    /// be redirected to without asking the user.
    Login { redirect_url: Url, whitelisted: bool },
    /// The SSO stage of a user-interactive authentication session is done.
    Reauthenticated,
}

impl Sso {
    pub fn new(config: &Config) -> anyhow::Result<Self> {
        let providers = config
            .sso
            .providers
            .iter()
            .map(|p| {
                Ok(Provider {
                    localpart: Template::parse(&p.localpart_template).map_err(anyhow::Error::msg)?,
                    display_name: Template::parse(&p.display_name_template).map_err(anyhow::Error::msg)?,
                    config: p.clone(),
                    discovered: Mutex::new(None),
                })
            })
            .collect::<anyhow::Result<_>>()?;
        // Never follow redirects from a provider (the OAuth2 security advice).
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(HTTP_TIMEOUT)
            .user_agent(concat!("Plexus/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let callback_url = RedirectUrl::new(format!("{}{CALLBACK_PATH}", config.base_url()))?;
        Ok(Sso { providers, http, callback_url })
    }

    /// The configured providers, in config order.
    pub fn providers(&self) -> impl Iterator<Item = &OidcProviderConfig> {
        self.providers.iter().map(|p| &p.config)
    }

    fn provider(&self, id: &str) -> Result<&Provider> {
        self.providers
            .iter()
            .find(|p| p.config.id == id)
            .ok_or_else(|| Error::not_found(format!("Unknown identity provider {id:?}")))
    }

    /// The client for a provider, discovering it if needed.
    async fn client(&self, provider: &Provider) -> Result<Client> {
        let metadata = {
            // Held across discovery, so that concurrent logins wait for one discovery.
            let mut cached = provider.discovered.lock().await;
            match &*cached {
                Some((metadata, at)) if at.elapsed() < METADATA_MAX_AGE => metadata.clone(),
                stale => match self.discover(&provider.config).await {
                    Ok(metadata) => {
                        *cached = Some((metadata.clone(), Instant::now()));
                        metadata
                    }
                    Err(e) => match stale {
                        Some((metadata, _)) => {
                            tracing::warn!(provider = %provider.config.id, error = %e, "rediscovery failed, keeping the old metadata");
                            metadata.clone()
                        }
                        None => return Err(e),
                    },
                },
            }
        };
        let config = &provider.config;
        Ok(CoreClient::from_provider_metadata(
            metadata,
            ClientId::new(config.client_id.clone()),
            Some(ClientSecret::new(config.client_secret.clone())),
        )
        .set_redirect_uri(self.callback_url.clone()))
    }

    async fn discover(&self, config: &OidcProviderConfig) -> Result<CoreProviderMetadata> {
        let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| Error::Internal(e.into()))?;
        CoreProviderMetadata::discover_async(issuer, &self.http).await.map_err(|e| {
            tracing::warn!(provider = %config.id, error = %e, "OpenID Connect discovery failed");
            unavailable()
        })
    }

    /// Tries to discover every provider once at start, so that a misconfiguration shows in the
    /// log early. Failures are only logged: each login discovers again if needed.
    pub async fn preload(svc: Weak<Services>) {
        let Some(svc) = svc.upgrade() else { return };
        for provider in &svc.sso.providers {
            if svc.sso.client(provider).await.is_ok() {
                tracing::info!(provider = %provider.config.id, "OpenID Connect provider discovered");
            }
        }
    }
}

/// 502: the provider did not answer as it should.
fn unavailable() -> Error {
    Error::matrix(StatusCode::BAD_GATEWAY, "M_UNKNOWN", "The identity provider cannot be reached; try again later")
}

/// Starts a login at a provider: stores the state, nonce and PKCE verifier (until the
/// callback takes them) and answers the provider's authorization URL.
pub async fn start(svc: &Services, provider_id: &str, purpose: Purpose) -> Result<Redirect> {
    if let Purpose::Login { redirect_url } = &purpose {
        Url::parse(redirect_url).map_err(|_| Error::invalid_param("redirectUrl must be an absolute URL"))?;
    }
    let provider = svc.sso.provider(provider_id)?;
    let client = svc.sso.client(provider).await?;
    let (challenge, verifier) = PkceCodeChallenge::new_random_sha256();
    // `openid` itself is always added by the client.
    let scopes = provider.config.scopes.iter().filter(|s| *s != "openid").map(|s| Scope::new(s.clone()));
    let (provider_url, state, nonce) = client
        .authorize_url(CoreAuthenticationFlow::AuthorizationCode, CsrfToken::new_random, Nonce::new_random)
        .add_scopes(scopes)
        .set_pkce_challenge(challenge)
        .url();
    let now = now_ms();
    let pending = storage::sso::PendingLogin {
        provider_id: provider_id.to_owned(),
        nonce: nonce.secret().clone(),
        pkce_verifier: verifier.secret().clone(),
        purpose,
        expires_ts: now + PENDING_LIFETIME_MS,
    };
    let mut tx = svc.db.begin().await?;
    storage::sso::insert_pending(&mut tx, state.secret(), &pending, now).await?;
    tx.commit().await?;
    Ok(Redirect { provider_url, state: state.secret().clone() })
}

/// Finishes a login at the callback: the state must be one this server issued, unused and
/// unexpired, to the same browser (`browser_state`, from its cookie); the code is exchanged
/// and the ID token checked; the subject is mapped to a local account (created at first
/// login); a login token is issued for the client.
pub async fn complete(svc: &Services, params: CallbackParams, browser_state: Option<&str>) -> Result<Completed> {
    let state = params.state.ok_or_else(|| Error::missing_param("Missing state"))?;
    let mut tx = svc.db.begin().await?;
    let pending = storage::sso::take_pending(&mut tx, &state).await?;
    tx.commit().await?;
    let pending = pending
        .filter(|p| p.expires_ts > now_ms())
        .ok_or_else(|| Error::forbidden("Unknown or expired login session: start the login again"))?;
    if browser_state != Some(state.as_str()) {
        return Err(Error::forbidden("This login was started in another browser: start the login again"));
    }
    if let Some(error) = params.error {
        let detail = params.error_description.unwrap_or_default();
        return Err(Error::forbidden(format!("The identity provider refused the login: {error} {detail}")));
    }
    let code = params.code.ok_or_else(|| Error::missing_param("Missing code"))?;
    let provider = svc.sso.provider(&pending.provider_id)?;
    let client = svc.sso.client(provider).await?;
    let token = client
        .exchange_code(AuthorizationCode::new(code))
        .map_err(|e| Error::Internal(e.into()))?
        .set_pkce_verifier(PkceCodeVerifier::new(pending.pkce_verifier))
        .request_async(&svc.sso.http)
        .await
        .map_err(|e| match e {
            RequestTokenError::ServerResponse(r) => {
                Error::forbidden(format!("The identity provider refused the code: {r}"))
            }
            other => {
                tracing::warn!(provider = %provider.config.id, error = %other, "token request failed");
                unavailable()
            }
        })?;
    let id_token = token.id_token().ok_or_else(|| Error::forbidden("The identity provider sent no ID token"))?;
    let subject = match id_token.claims(&client.id_token_verifier(), &Nonce::new(pending.nonce)) {
        Ok(claims) => claims.subject().to_string(),
        Err(e) => {
            if matches!(e, ClaimsVerificationError::SignatureVerification(_)) {
                // Perhaps the provider rotated its keys: the next login discovers again.
                *provider.discovered.lock().await = None;
            }
            return Err(Error::forbidden(format!("Invalid ID token: {e}")));
        }
    };
    let mut claims = jwt_claims(&id_token.to_string())?;
    let missing = provider.localpart.claims().chain(provider.display_name.claims()).any(|c| !claims.contains_key(c));
    if missing && let Some(url) = client.user_info_url() {
        let more = userinfo(&svc.sso.http, url.url(), token.access_token(), &subject).await?;
        for (k, v) in more {
            claims.entry(k).or_insert(v);
        }
    }
    match pending.purpose {
        Purpose::Login { redirect_url: client_url } => {
            let user = local_user(svc, provider, &subject, &claims).await?;
            let login_token = login_tokens::issue(&svc.db, &user).await?;
            let mut redirect_url = Url::parse(&client_url).map_err(|e| Error::Internal(e.into()))?;
            redirect_url.query_pairs_mut().append_pair("loginToken", &login_token);
            let whitelisted = svc.config.sso.client_whitelist.iter().any(|prefix| client_url.starts_with(prefix));
            Ok(Completed::Login { redirect_url, whitelisted })
        }
        Purpose::Reauthenticate { ui_auth_session } => {
            // Only an existing link proves who this is; nothing is created.
            let linked = storage::sso::linked_user(&svc.db, &provider.config.id, &subject).await?;
            let user = linked.map(OwnedUserId::try_from).transpose().map_err(|e| Error::Internal(e.into()))?;
            let proved = match user {
                Some(user) => svc.uia.complete_sso(&svc.db, &ui_auth_session, &user).await?,
                None => false,
            };
            if proved {
                Ok(Completed::Reauthenticated)
            } else {
                Err(Error::forbidden("You signed in as someone else than the user to authenticate"))
            }
        }
    }
}

/// The configured providers a user is linked to, in config order.
pub async fn linked_providers<'a>(svc: &'a Services, user: &UserId) -> Result<Vec<&'a OidcProviderConfig>> {
    if svc.sso.providers.is_empty() {
        return Ok(Vec::new());
    }
    let linked = storage::sso::providers_of_user(&svc.db, user.as_str()).await?;
    Ok(svc.sso.providers().filter(|p| linked.contains(&p.id)).collect())
}

/// Every claim of a JWT already verified by `openidconnect` (which types only the standard
/// ones; templates may name any).
fn jwt_claims(jwt: &str) -> Result<Map<String, Value>> {
    let payload = jwt.split('.').nth(1).and_then(|p| URL_SAFE_NO_PAD.decode(p).ok());
    payload
        .and_then(|p| serde_json::from_slice(&p).ok())
        .ok_or_else(|| Error::forbidden("The ID token's claims are not a JSON object"))
}

/// The userinfo claims, which must be about the ID token's subject (OpenID Connect Core 5.3.2).
async fn userinfo(
    http: &reqwest::Client,
    url: &Url,
    access_token: &AccessToken,
    subject: &str,
) -> Result<Map<String, Value>> {
    let answer = http.get(url.clone()).bearer_auth(access_token.secret()).send().await;
    let claims: Map<String, Value> = match answer {
        Ok(r) if r.status().is_success() => r.json().await.map_err(|_| unavailable())?,
        Ok(r) => return Err(Error::forbidden(format!("The identity provider's userinfo answered {}", r.status()))),
        Err(_) => return Err(unavailable()),
    };
    if claims.get("sub").and_then(Value::as_str) != Some(subject) {
        return Err(Error::forbidden("The userinfo claims are about another subject"));
    }
    Ok(claims)
}

/// The account a provider's subject logs in as: the one linked to it, else the one its claims
/// name (created now, or an existing one when the provider may take existing accounts).
async fn local_user(
    svc: &Services,
    provider: &Provider,
    subject: &str,
    claims: &Map<String, Value>,
) -> Result<OwnedUserId> {
    let id = &provider.config.id;
    if let Some(user) = storage::sso::linked_user(&svc.db, id, subject).await? {
        return OwnedUserId::try_from(user).map_err(|e| Error::Internal(e.into()));
    }
    let localpart = provider
        .localpart
        .render(claims)
        .ok_or_else(|| Error::forbidden("The identity provider did not send the claims the user ID is made from"))?
        .to_lowercase();
    let user_id = accounts::validate_new_localpart(&localpart, &svc.config.server_name)?;
    let display_name = provider.display_name.render(claims);
    let mut tx = svc.db.begin().await?;
    let created = storage::users::create(
        &mut tx,
        user_id.as_str(),
        None,
        display_name.as_deref().unwrap_or(&localpart),
        false,
        false,
    )
    .await?;
    if !created && !provider.config.allow_existing_users {
        let message = format!("The user ID {user_id} already belongs to another account");
        return Err(Error::matrix(StatusCode::BAD_REQUEST, "M_USER_IN_USE", message));
    }
    if !storage::sso::link(&mut tx, id, subject, user_id.as_str()).await? {
        // Another login of the same subject linked it meanwhile.
        drop(tx);
        let user = storage::sso::linked_user(&svc.db, id, subject)
            .await?
            .ok_or_else(|| Error::Internal(anyhow::anyhow!("external ID link vanished")))?;
        return OwnedUserId::try_from(user).map_err(|e| Error::Internal(e.into()));
    }
    tx.commit().await?;
    if created {
        tracing::info!(%user_id, provider = %id, "account created by single sign-on");
    }
    Ok(user_id)
}
