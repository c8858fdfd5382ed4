-- ow-es schema v6: flow control (keys, priorities, limits). See the PostgreSQL migration.
ALTER TABLE workflow_runs ADD COLUMN key TEXT;
ALTER TABLE workflow_runs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;

CREATE INDEX workflow_runs_queue
    ON workflow_runs (namespace_id, priority DESC, available_at)
    WHERE status IN ('pending', 'running') AND waiting_for IS NULL AND available_at IS NOT NULL;
CREATE INDEX workflow_runs_timers
    ON workflow_runs (namespace_id, workflow_name, available_at)
    WHERE status IN ('pending', 'running') AND waiting_for IS NOT NULL;
CREATE INDEX workflow_runs_pending
    ON workflow_runs (namespace_id, workflow_name, available_at)
    WHERE status = 'pending';
CREATE INDEX workflow_runs_held
    ON workflow_runs (namespace_id, workflow_name, key)
    WHERE claim_token IS NOT NULL;
CREATE INDEX workflow_runs_started
    ON workflow_runs (namespace_id, workflow_name, started_at)
    WHERE started_at IS NOT NULL;
CREATE INDEX workflow_runs_key_started
    ON workflow_runs (namespace_id, workflow_name, key, started_at)
    WHERE key IS NOT NULL AND started_at IS NOT NULL;

CREATE TABLE run_limits (
    namespace_id          TEXT    NOT NULL,
    workflow_name         TEXT    NOT NULL,
    concurrency           INTEGER,
    per_key               INTEGER,
    rate                  TEXT,
    rate_count            INTEGER,
    rate_seconds          REAL,
    per_key_rate          TEXT,
    per_key_rate_count    INTEGER,
    per_key_rate_seconds  REAL,
    source                TEXT    NOT NULL,
    updated_at            TEXT    NOT NULL,
    PRIMARY KEY (namespace_id, workflow_name)
);

-- The dashboard's counts per workflow and status: an index-only scan instead of reading every
-- row of the namespace (it still visits every entry; the dashboard caches the counts).
CREATE INDEX workflow_runs_counts ON workflow_runs (namespace_id, workflow_name, status);
