-- The DAG's edges (prev events) and auth edges are read from the PDUs themselves: nothing
-- queried these copies but the start of backfilling, and every send paid for writing them.
DROP TABLE event_edges;
DROP TABLE event_auth;
