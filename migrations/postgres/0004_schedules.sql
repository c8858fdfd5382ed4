-- ow-es schema v4: cron schedules. Coordination state, like the worker registry (not an
-- event-sourced projection): a worker that registered a schedule upserts its row when it starts
-- (keeping paused and next_tick_at); firing locks due rows FOR UPDATE SKIP LOCKED, starts each
-- tick's run (idempotency key schedule:<name>:<tick time>) and advances next_tick_at.
CREATE TABLE schedules (
    namespace_id   text        NOT NULL,
    name           text        NOT NULL,
    workflow_name  text        NOT NULL,
    version        text,
    cron           text        NOT NULL,
    timezone       text        NOT NULL,
    input          jsonb,
    tick           boolean     NOT NULL DEFAULT false,  -- the input is the Tick
    overlap        text        NOT NULL,
    catch_up       text        NOT NULL,
    next_tick_at   timestamptz NOT NULL,
    paused         boolean     NOT NULL DEFAULT false,
    last_run_id    text,
    PRIMARY KEY (namespace_id, name)
);
