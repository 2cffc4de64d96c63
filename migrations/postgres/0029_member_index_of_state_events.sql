-- Every query of this index names a state key: messages (no state key) need no entry in it,
-- and a send no longer writes one.
DROP INDEX events_member;
CREATE INDEX events_member ON events (state_key, event_type, stream_pos) WHERE state_key IS NOT NULL;
