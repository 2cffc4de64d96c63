-- Work queued for application services: events of rooms they are interested in,
-- ephemeral events and to-device messages (JSON), in order. A row gets the txn_id of the transaction that first
-- carries it (the id of the transaction's first row), so a retried transaction keeps its
-- ID and its contents; the rows go once the appservice accepted it.
CREATE TABLE appservice_outbox (
    id BIGSERIAL PRIMARY KEY,
    appservice_id TEXT NOT NULL,
    event_id TEXT,
    ephemeral TEXT,
    to_device TEXT,
    txn_id BIGINT
);
CREATE INDEX appservice_outbox_by_appservice ON appservice_outbox (appservice_id, id);
