-- Presence (each user's latest state, with the stream position of its last change) and
-- reports about users (reports about rooms and events go to event_reports).
-- The SQLite twin is migrations/sqlite/0006_presence.sql: keep them in step.

CREATE TABLE presence (
    user_id TEXT PRIMARY KEY,
    -- online, unavailable or offline
    state TEXT NOT NULL,
    status_msg TEXT,
    last_active_ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL
);
CREATE INDEX presence_stream ON presence (stream_pos);

CREATE TABLE user_reports (
    id BIGSERIAL PRIMARY KEY,
    target_user_id TEXT NOT NULL,
    reporter TEXT NOT NULL,
    reason TEXT NOT NULL,
    received_ts BIGINT NOT NULL
);
