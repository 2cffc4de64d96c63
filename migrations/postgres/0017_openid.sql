-- OpenID tokens (POST /user/{userId}/openid/request_token), exchanged by other services
-- for the user's ID at GET /_matrix/federation/v1/openid/userinfo. Stored as SHA-256 hashes,
-- like access tokens. The other database's twin file has the same number: keep them in step.
CREATE TABLE openid_tokens (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    expires_ts BIGINT NOT NULL
);
CREATE INDEX openid_tokens_expiry ON openid_tokens (expires_ts);
