-- Federation transport: other servers' signing keys, the outbound queue per destination
-- and the retry state of each destination.
-- The PostgreSQL twin is migrations/postgres/0007_federation.sql: keep them in step.

-- Signing keys of other servers. `valid_until_ts` is, for a current key (`old` = 0), the
-- lesser of the response's valid_until_ts and the fetch time + 7 days; for an old key
-- (`old` = 1, from old_verify_keys, usable for events only) its expired_ts.
CREATE TABLE server_signing_keys (
    server_name TEXT NOT NULL,
    key_id TEXT NOT NULL,
    public_key TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    old BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL,
    PRIMARY KEY (server_name, key_id)
);

-- The last key response of each server, signed by that server, served again (co-signed)
-- when acting as a notary.
CREATE TABLE server_key_responses (
    server_name TEXT PRIMARY KEY,
    response_json TEXT NOT NULL,
    valid_until_ts BIGINT NOT NULL,
    fetched_ts BIGINT NOT NULL
);

-- PDUs (by event ID) and EDUs (as JSON) waiting to be sent, in `id` order per destination.
-- AUTOINCREMENT: IDs are never reused, so transaction IDs derived from them stay unique.
CREATE TABLE federation_outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    destination TEXT NOT NULL,
    event_id TEXT,
    edu_json TEXT,
    queued_ts BIGINT NOT NULL
);
CREATE INDEX federation_outbox_by_destination ON federation_outbox (destination, id);

-- Destinations that failed: consecutive failures and when to try again.
CREATE TABLE federation_destinations (
    destination TEXT PRIMARY KEY,
    failures BIGINT NOT NULL,
    retry_at_ts BIGINT NOT NULL
);
