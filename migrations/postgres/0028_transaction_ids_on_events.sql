-- The transaction ID a local client sent an event with, and the sending device, are kept on
-- the event's row, read with it when the event is shown to its sender. `event_txns` only
-- answers a retried transaction, by its key: it needs no index by event, which every send
-- paid for with a write at a random place.
ALTER TABLE events ADD COLUMN txn_device_id TEXT;
ALTER TABLE events ADD COLUMN txn_id TEXT;
UPDATE events e SET txn_device_id = t.device_id, txn_id = t.txn_id FROM event_txns t WHERE t.event_id = e.event_id;
DROP INDEX event_txns_event;
