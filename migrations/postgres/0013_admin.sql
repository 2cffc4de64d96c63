-- Administration: account flags set by admins, blocked rooms, server notice rooms.
-- The SQLite twin is migrations/sqlite/0013_admin.sql: keep them in step.

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
CREATE TABLE event_search (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    key TEXT NOT NULL,
    vector TSVECTOR NOT NULL
);
CREATE INDEX event_search_vector ON event_search USING GIN (vector);
CREATE INDEX event_search_room ON event_search (room_id);
INSERT INTO event_search (event_id, room_id, key, vector)
SELECT event_id, room_id, 'content.' || f.field, to_tsvector('english', (json::jsonb) -> 'content' ->> f.field)
FROM events JOIN (VALUES ('m.room.message', 'body'), ('m.room.name', 'name'), ('m.room.topic', 'topic'))
     AS f(event_type, field) ON events.event_type = f.event_type
WHERE stream_pos IS NOT NULL AND rejected IS NULL AND redacted_by IS NULL
  AND jsonb_typeof((json::jsonb) -> 'content' -> f.field) = 'string';
