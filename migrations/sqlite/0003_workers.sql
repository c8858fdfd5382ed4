-- ow-es schema v3: the worker registry. Coordination state, like leases (not an event-sourced
-- projection): each worker upserts its row when it starts, its heartbeat keeps it fresh, and
-- it deletes it when it stops. A row whose heartbeat is older than its ttl is a dead worker's.
CREATE TABLE workers (
    namespace_id  TEXT    NOT NULL,
    id            TEXT    NOT NULL,
    host          TEXT    NOT NULL,
    pid           INTEGER NOT NULL,
    workflows     TEXT    NOT NULL,  -- JSON [[name, version or null], ...] it serves
    concurrency   INTEGER NOT NULL,
    busy          INTEGER NOT NULL DEFAULT 0,
    ttl_seconds   REAL    NOT NULL,
    started_at    TEXT    NOT NULL,
    heartbeat_at  TEXT    NOT NULL,
    PRIMARY KEY (namespace_id, id)
);
