-- Administration: account flags set by admins, blocked rooms, server notice rooms.
-- The PostgreSQL twin is migrations/postgres/0013_admin.sql: keep them in step.

-- shadow_banned: the user's events are answered with fake IDs and never sent.
-- locked: every request answers M_USER_LOCKED. suspended: writes answer M_USER_SUSPENDED.
-- erased: deactivated with erasure; the user's events are served redacted to new joiners.
ALTER TABLE users ADD COLUMN shadow_banned BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN locked BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN suspended BIGINT NOT NULL DEFAULT 0;
ALTER TABLE users ADD COLUMN erased_ts BIGINT;

-- Rooms shut down by an admin with block: local users may not join them again.
CREATE TABLE blocked_rooms (
    room_id TEXT PRIMARY KEY,
    blocked_by TEXT NOT NULL,
    blocked_ts BIGINT NOT NULL
);

-- The server notices room of each user.
CREATE TABLE server_notice_rooms (
    user_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL
);

-- Full-text search over room events (POST /search): the searchable text of each event,
-- `key` naming its field (content.body, content.name or content.topic).
CREATE VIRTUAL TABLE event_search USING fts5(
    event_id UNINDEXED, room_id UNINDEXED, key UNINDEXED, text, tokenize = 'porter unicode61'
);
INSERT INTO event_search (event_id, room_id, key, text)
SELECT event_id, room_id, 'content.body', json_extract(json, '$.content.body') FROM events
WHERE event_type = 'm.room.message' AND stream_pos IS NOT NULL AND rejected IS NULL AND redacted_by IS NULL
  AND json_type(json, '$.content.body') = 'text';
INSERT INTO event_search (event_id, room_id, key, text)
SELECT event_id, room_id, 'content.name', json_extract(json, '$.content.name') FROM events
WHERE event_type = 'm.room.name' AND stream_pos IS NOT NULL AND rejected IS NULL AND redacted_by IS NULL
  AND json_type(json, '$.content.name') = 'text';
INSERT INTO event_search (event_id, room_id, key, text)
SELECT event_id, room_id, 'content.topic', json_extract(json, '$.content.topic') FROM events
WHERE event_type = 'm.room.topic' AND stream_pos IS NOT NULL AND rejected IS NULL AND redacted_by IS NULL
  AND json_type(json, '$.content.topic') = 'text';
