-- ow-es schema v6: flow control (keys, priorities, limits).
ALTER TABLE workflow_runs ADD COLUMN key text, ADD COLUMN priority integer NOT NULL DEFAULT 0;

-- The claim's first choice: runs ready without a timer (new, woken, released, resumed), by
-- priority, then oldest first. Runs with a timer (sleeps, waits, retries) are found through
-- workflow_runs_ready, whose range stops at now(): in a priority-first index an idle claim
-- would walk every parked run of the top priority.
CREATE INDEX workflow_runs_queue
    ON workflow_runs (namespace_id, priority DESC, available_at)
    WHERE status IN ('pending', 'running') AND waiting_for IS NULL AND available_at IS NOT NULL;

-- Timers (sleeps, waits, retries), per workflow: the due ones are a range up to now() that
-- never walks the queued runs (workflow_runs_ready holds both kinds), and a worker's next
-- timer is one probe per workflow it serves, however many runs of others are parked.
CREATE INDEX workflow_runs_timers
    ON workflow_runs (namespace_id, workflow_name, available_at)
    WHERE status IN ('pending', 'running') AND waiting_for IS NOT NULL;
-- Delayed starts, per workflow (a worker's next timer): the ready backlog is before now().
CREATE INDEX workflow_runs_pending
    ON workflow_runs (namespace_id, workflow_name, available_at)
    WHERE status = 'pending';

-- Places held (a claim token from run_claimed until the run parks, is released or ends) and
-- first claims, for the limits: counted from the runs projection, no counter row to contend on.
CREATE INDEX workflow_runs_held
    ON workflow_runs (namespace_id, workflow_name, key)
    WHERE claim_token IS NOT NULL;
CREATE INDEX workflow_runs_started
    ON workflow_runs (namespace_id, workflow_name, started_at)
    WHERE started_at IS NOT NULL;
CREATE INDEX workflow_runs_key_started
    ON workflow_runs (namespace_id, workflow_name, key, started_at)
    WHERE key IS NOT NULL AND started_at IS NOT NULL;

-- The limits in force, per workflow name (all versions). Coordination state written by workers
-- from the code's Limits (source 'code') or by `ow-es limits set` (source 'operator', which a
-- deploy does not overwrite); the claim locks the rows of the workflows it serves.
CREATE TABLE run_limits (
    namespace_id          text             NOT NULL,
    workflow_name         text             NOT NULL,
    concurrency           integer,
    per_key               integer,
    rate                  text,
    rate_count            integer,
    rate_seconds          double precision,
    per_key_rate          text,
    per_key_rate_count    integer,
    per_key_rate_seconds  double precision,
    source                text             NOT NULL,
    updated_at            timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, workflow_name)
);

-- The dashboard's counts per workflow and status: an index-only scan instead of reading every
-- row of the namespace (it still visits every entry; the dashboard caches the counts).
CREATE INDEX workflow_runs_counts ON workflow_runs (namespace_id, workflow_name, status);
