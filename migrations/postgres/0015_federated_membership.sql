-- Membership over federation: rooms joined through another server, and memberships of
-- local users in rooms this server is not in (invites received, knocks, rejections).
-- The SQLite twin is migrations/sqlite/0015_federated_membership.sql: keep them in step.

-- The state before the first event this server has of a room joined over federation
-- (the state send_join answered): the state at the start of its timeline.
ALTER TABLE rooms ADD COLUMN base_state_group BIGINT;

-- A local user's membership in a room this server is not in, as the other server sent it:
-- the signed member event, the stripped state shown with it, and the stream position it
-- was written at (sync shows it once). Replaced when the user's membership changes.
CREATE TABLE remote_memberships (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    membership TEXT NOT NULL,
    room_version TEXT NOT NULL,
    event_json TEXT NOT NULL,
    stripped_state TEXT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
CREATE INDEX remote_memberships_stream ON remote_memberships (user_id, stream_pos);

-- Events fetched with /backfill (history from before this server joined a room) get
-- negative stream positions, counting down from 0: they sort before everything this server
-- has seen, and are never news to an incremental /sync.
CREATE TABLE backfill_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value BIGINT NOT NULL);
INSERT INTO backfill_counter (id, value) VALUES (1, 0);
