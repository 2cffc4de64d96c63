-- Pushers (POST /pushers/set) and the queue of pushes to their push gateways.
-- The twin is migrations/postgres/0012_pushers.sql: keep them in step.

-- One pusher per (app_id, pushkey, user). `pusher_json` is the pusher as clients set and
-- list it (kind, data, names, lang, profile_tag); `device_id` is the device that set it
-- (the pusher goes with the device); `pushkey_ts` when the pushkey was last set (ms).
-- AUTOINCREMENT: IDs are never reused, so a deleted pusher's queued pushes never reach a new one.
CREATE TABLE pushers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    app_id TEXT NOT NULL,
    pushkey TEXT NOT NULL,
    pusher_json TEXT NOT NULL,
    pushkey_ts BIGINT NOT NULL,
    UNIQUE (app_id, pushkey, user_id)
);
CREATE INDEX pushers_by_device ON pushers (user_id, device_id);

-- Pushes waiting for their gateway, in `id` order per pusher: a notification (the
-- push_notifications row of the pusher's user at `stream_pos`) or, with `stream_pos`
-- NULL, a badge update (the unread count after a read receipt).
CREATE TABLE push_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pusher_id BIGINT NOT NULL,
    stream_pos BIGINT,
    queued_ts BIGINT NOT NULL
);
CREATE INDEX push_outbox_by_pusher ON push_outbox (pusher_id, id);

-- The notifications of one event (queued for pushers in the transaction that appends it).
CREATE INDEX push_notifications_by_pos ON push_notifications (stream_pos);
