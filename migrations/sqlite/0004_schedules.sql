-- ow-es schema v4: cron schedules. Coordination state, like the worker registry (not an
-- event-sourced projection): a worker that registered a schedule upserts its row when it starts
-- (keeping paused and next_tick_at); firing (under the writer lock) starts each tick's run
-- (idempotency key schedule:<name>:<tick time>) and advances next_tick_at.
CREATE TABLE schedules (
    namespace_id   TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    workflow_name  TEXT    NOT NULL,
    version        TEXT,
    cron           TEXT    NOT NULL,
    timezone       TEXT    NOT NULL,
    input          TEXT,             -- JSON
    tick           INTEGER NOT NULL DEFAULT 0,  -- the input is the Tick
    overlap        TEXT    NOT NULL,
    catch_up       TEXT    NOT NULL,
    next_tick_at   TEXT    NOT NULL,
    paused         INTEGER NOT NULL DEFAULT 0,
    last_run_id    TEXT,
    PRIMARY KEY (namespace_id, name)
);
