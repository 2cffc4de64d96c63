-- Federation of room events: the transactions other servers sent us.
-- The PostgreSQL twin is migrations/postgres/0014_federation_events.sql: keep them in step.

-- Transactions received (PUT /_matrix/federation/v1/send/{txnId}) with the answer given:
-- a retried transaction is answered again without being processed twice.
CREATE TABLE federation_inbound_txns (
    origin TEXT NOT NULL,
    txn_id TEXT NOT NULL,
    response_json TEXT NOT NULL,
    received_ts BIGINT NOT NULL,
    PRIMARY KEY (origin, txn_id)
);
CREATE INDEX federation_inbound_txns_by_time ON federation_inbound_txns (received_ts);
