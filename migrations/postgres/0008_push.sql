-- Push: each user's push ruleset and the notifying events counted for badges and
-- /notifications. The PostgreSQL twin is migrations/sqlite/0008_push.sql.

-- The whole ruleset of a user (ruma's `Ruleset` as JSON), written on first use.
CREATE TABLE push_rules (
    user_id TEXT PRIMARY KEY,
    ruleset TEXT NOT NULL
);

-- One row per event that notified a user (push actions included `notify`). `stream_pos`
-- is the event's, so receipts (which point at events) decide what is read.
-- `thread_id` is the thread root's event ID, or 'main' for the main timeline.
CREATE TABLE push_notifications (
    user_id TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    room_id TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    highlight BIGINT NOT NULL,
    actions TEXT NOT NULL,
    ts BIGINT NOT NULL,
    PRIMARY KEY (user_id, stream_pos)
);
CREATE INDEX push_notifications_room ON push_notifications (user_id, room_id, stream_pos);
