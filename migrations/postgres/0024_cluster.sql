-- State that several Plexus processes on one database share (docs/scaling.md). The other
-- database's twin file has the same number: keep them in step.

-- User-interactive authentication sessions: a session started on one process is continued
-- on another. `completed` lists the completed stages, comma-separated.
CREATE TABLE uia_sessions (
    session_id TEXT PRIMARY KEY,
    user_id TEXT,
    completed TEXT NOT NULL DEFAULT '',
    registration_token TEXT,
    created_ts BIGINT NOT NULL
);

-- Shared-secret registration nonces handed out and not used yet.
CREATE TABLE registration_nonces (
    nonce TEXT PRIMARY KEY,
    created_ts BIGINT NOT NULL
);

-- Serials shared by the processes (the typing serial of sync tokens). Taking one locks the
-- row until commit, so serials are committed, and announced, in order.
CREATE TABLE cluster_counters (
    name TEXT PRIMARY KEY,
    value BIGINT NOT NULL
);
INSERT INTO cluster_counters (name, value) VALUES ('typing', 0);
