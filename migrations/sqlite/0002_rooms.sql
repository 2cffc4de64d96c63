-- Rooms as event DAGs: events, edges, state groups (delta-encoded), current state,
-- forward extremities, transaction IDs, relations, aliases, receipts, reports.
-- The PostgreSQL twin is migrations/postgres/0002_rooms.sql: keep them in step.

CREATE TABLE rooms (
    room_id TEXT PRIMARY KEY,
    room_version TEXT NOT NULL,
    creator TEXT NOT NULL,
    -- published in the public room directory
    published BIGINT NOT NULL DEFAULT 0,
    -- state group of the room's current (resolved) state
    current_state_group BIGINT,
    created_ts BIGINT NOT NULL
);

-- Every event of every room. `json` is the PDU as canonical JSON (pruned in place when
-- redacted). `stream_pos` orders the timeline (NULL for outliers, which are not in it).
-- `state_group` is the state *after* the event.
CREATE TABLE events (
    event_id TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    stream_pos BIGINT,
    depth BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT,
    sender TEXT NOT NULL,
    origin_server_ts BIGINT NOT NULL,
    json TEXT NOT NULL,
    outlier BIGINT NOT NULL DEFAULT 0,
    rejected TEXT,
    soft_failed BIGINT NOT NULL DEFAULT 0,
    state_group BIGINT,
    redacted_by TEXT
);
CREATE UNIQUE INDEX events_stream_pos ON events (stream_pos);
CREATE INDEX events_room_stream ON events (room_id, stream_pos);
CREATE INDEX events_room_ts ON events (room_id, origin_server_ts);
CREATE INDEX events_member ON events (state_key, event_type, stream_pos);

CREATE TABLE event_edges (
    event_id TEXT NOT NULL,
    prev_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, prev_event_id)
);
CREATE INDEX event_edges_prev ON event_edges (prev_event_id);

CREATE TABLE event_auth (
    event_id TEXT NOT NULL,
    auth_event_id TEXT NOT NULL,
    PRIMARY KEY (event_id, auth_event_id)
);

CREATE TABLE room_extremities (
    room_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (room_id, event_id)
);

-- A state group is a delta on `prev_group` (or a full snapshot when prev_group is NULL).
CREATE TABLE state_groups (
    id BIGINT PRIMARY KEY,
    room_id TEXT NOT NULL,
    prev_group BIGINT,
    chain_len BIGINT NOT NULL
);
CREATE TABLE state_group_entries (
    group_id BIGINT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (group_id, event_type, state_key)
);

-- The current state of each room, for queries (members, joined rooms, directory).
CREATE TABLE current_state (
    room_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    state_key TEXT NOT NULL,
    event_id TEXT NOT NULL,
    -- for m.room.member: the membership
    membership TEXT,
    PRIMARY KEY (room_id, event_type, state_key)
);
CREATE INDEX current_state_member ON current_state (state_key, event_type, membership);

-- Transaction IDs are scoped to the device and the room (as the request path is).
CREATE TABLE event_txns (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, room_id, txn_id)
);
CREATE INDEX event_txns_event ON event_txns (event_id);

CREATE TABLE event_relations (
    event_id TEXT PRIMARY KEY,
    relates_to TEXT NOT NULL,
    rel_type TEXT NOT NULL,
    room_id TEXT NOT NULL
);
CREATE INDEX event_relations_target ON event_relations (relates_to, rel_type);

CREATE TABLE room_aliases (
    alias TEXT PRIMARY KEY,
    room_id TEXT NOT NULL,
    creator TEXT NOT NULL
);
CREATE INDEX room_aliases_room ON room_aliases (room_id);

CREATE TABLE receipts (
    room_id TEXT NOT NULL,
    user_id TEXT NOT NULL,
    receipt_type TEXT NOT NULL,
    thread_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    ts BIGINT NOT NULL,
    stream_pos BIGINT NOT NULL,
    PRIMARY KEY (room_id, user_id, receipt_type, thread_id)
);
CREATE INDEX receipts_stream ON receipts (room_id, stream_pos);

CREATE TABLE event_reports (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id TEXT NOT NULL,
    event_id TEXT,
    reporter TEXT NOT NULL,
    reason TEXT,
    score BIGINT,
    received_ts BIGINT NOT NULL
);

CREATE TABLE forgotten_rooms (
    user_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    PRIMARY KEY (user_id, room_id)
);
