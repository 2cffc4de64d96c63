-- Presence shared by the processes of one database, admin room deletions kept for their
-- status queries, and shared rate-limit buckets. The SQLite twin is migrations/sqlite/0025_presence_deletions.sql.

-- When a sync that sets presence last ran (the heartbeat of the processes serving the
-- user's syncs writes it): a user whose syncs stop goes offline some time after.
ALTER TABLE presence ADD COLUMN last_sync_ts BIGINT NOT NULL DEFAULT 0;
-- The users the presence timers look at: local ones not offline are few.
CREATE INDEX presence_not_offline ON presence (user_id) WHERE state <> 'offline';

-- Room deletions of DELETE /_synapse/admin/v2/rooms/{room}: what was asked (to resume one
-- cut short by a crash), its status (active, complete or failed) and its report.
CREATE TABLE room_deletions (
    delete_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    -- JSON: requester, block, purge and the notice room
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    -- JSON: kicked_users, failed_to_kick_users, local_aliases, new_room_id
    result TEXT,
    error TEXT,
    updated_ts BIGINT NOT NULL
);
CREATE INDEX room_deletions_room ON room_deletions (room_id);

-- Rate-limit buckets shared by the processes (login and registration, by client address;
-- PostgreSQL only, SQLite has one process and keeps them in memory): a token bucket as of
-- `updated_ts`, and whether its last take was allowed.
CREATE TABLE rate_limit_buckets (
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    tokens DOUBLE PRECISION NOT NULL,
    allowed BOOLEAN NOT NULL,
    updated_ts BIGINT NOT NULL,
    PRIMARY KEY (action, subject)
);
