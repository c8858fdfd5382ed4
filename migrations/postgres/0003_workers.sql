-- ow-es schema v3: the worker registry. Coordination state, like leases (not an event-sourced
-- projection): each worker upserts its row when it starts, its heartbeat keeps it fresh, and
-- it deletes it when it stops. A row whose heartbeat is older than its ttl is a dead worker's.
CREATE TABLE workers (
    namespace_id  text        NOT NULL,
    id            text        NOT NULL,
    host          text        NOT NULL,
    pid           integer     NOT NULL,
    workflows     jsonb       NOT NULL,  -- [[name, version or null], ...] it serves
    concurrency   integer     NOT NULL,
    busy          integer     NOT NULL DEFAULT 0,
    ttl_seconds   double precision NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL,
    PRIMARY KEY (namespace_id, id)
);
