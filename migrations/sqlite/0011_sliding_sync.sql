-- Simplified sliding sync (MSC4186): per-room bump stamps for sorting room lists, and the
-- connections whose per-room sent state must outlive a restart.
-- The PostgreSQL twin is migrations/postgres/0011_sliding_sync.sql.

-- The stream position of each room's newest event of a "bump" type (messages, not state
-- churn): the recency a room list is sorted by. Kept by rooms::append.
CREATE TABLE room_bump_stamps (
    room_id TEXT PRIMARY KEY,
    bump_pos BIGINT NOT NULL
);
INSERT INTO room_bump_stamps (room_id, bump_pos)
SELECT room_id, MAX(stream_pos) FROM events
WHERE stream_pos IS NOT NULL AND rejected IS NULL AND soft_failed = 0
  AND event_type IN ('m.room.create', 'm.room.message', 'm.room.encrypted', 'm.sticker',
                     'm.call.invite', 'm.poll.start', 'm.beacon_info')
GROUP BY room_id;

-- One sliding sync connection of a device (`conn_id` '' when the client gives none).
-- `generation` is drawn anew when the client starts over (a request without `pos`), so
-- positions of an older generation are refused; `counter` numbers the responses that sent
-- rooms.
CREATE TABLE sliding_sync_connections (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    generation BIGINT NOT NULL,
    counter BIGINT NOT NULL,
    PRIMARY KEY (user_id, device_id, conn_id)
);

-- What a connection has sent of a room: `first_sent` is the counter of the response that
-- first sent it (a client presenting an older position has not seen it), `sent_up_to` the
-- stream position its data was sent up to, `required_state` the config it was sent with.
CREATE TABLE sliding_sync_rooms (
    user_id TEXT NOT NULL,
    device_id TEXT NOT NULL,
    conn_id TEXT NOT NULL,
    room_id TEXT NOT NULL,
    first_sent BIGINT NOT NULL,
    sent_up_to BIGINT NOT NULL,
    required_state TEXT NOT NULL,
    PRIMARY KEY (user_id, device_id, conn_id, room_id)
);

-- Rooms whose receipts changed in a stream range, without scanning every room.
CREATE INDEX receipts_pos ON receipts (stream_pos);
