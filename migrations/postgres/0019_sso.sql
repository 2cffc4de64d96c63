-- Single sign-on (OpenID Connect). The other database's twin file has the same number: keep
-- them in step.

-- Logins in progress: one row per redirect to a provider, taken (deleted) by its callback.
-- `state` is the OAuth2 state parameter, also set as a cookie on the browser that started.
-- A login for a client has its `redirect_url`; a re-authentication for user-interactive
-- authentication has its `ui_auth_session` instead.
CREATE TABLE sso_sessions (
    state TEXT PRIMARY KEY,
    provider_id TEXT NOT NULL,
    nonce TEXT NOT NULL,
    pkce_verifier TEXT NOT NULL,
    redirect_url TEXT,
    ui_auth_session TEXT,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX sso_sessions_expiry ON sso_sessions (expires_ts);

-- Which local user a provider's subject is: the lasting link between the two.
CREATE TABLE user_external_ids (
    auth_provider TEXT NOT NULL,
    external_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    PRIMARY KEY (auth_provider, external_id)
);
CREATE INDEX user_external_ids_user ON user_external_ids (user_id);

-- Short-lived single-use tokens for `m.login.token`, stored as SHA-256 hashes.
CREATE TABLE login_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX login_tokens_expiry ON login_tokens (expires_ts);
