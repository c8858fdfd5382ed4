-- ow-es schema v1 for SQLite: the event log and its inline projections.
-- Times are ISO-8601 UTC text with microseconds, so text order is time order.

CREATE TABLE events (
    position        INTEGER PRIMARY KEY AUTOINCREMENT,
    namespace_id    TEXT    NOT NULL,
    run_id          TEXT    NOT NULL,
    seq             INTEGER NOT NULL,
    type            TEXT    NOT NULL,
    schema_version  INTEGER NOT NULL DEFAULT 1,
    data            TEXT    NOT NULL,
    created_at      TEXT    NOT NULL,
    UNIQUE (namespace_id, run_id, seq)
);

-- The log is immutable; retention opens the gate (a row in event_mutation_gate) in its own
-- transaction and closes it before commit.
CREATE TABLE event_mutation_gate (opened INTEGER NOT NULL);

CREATE TRIGGER events_no_update BEFORE UPDATE ON events
WHEN NOT EXISTS (SELECT 1 FROM event_mutation_gate)
BEGIN
    SELECT RAISE(ABORT, 'ow-es events are immutable (UPDATE on events)');
END;

CREATE TRIGGER events_no_delete BEFORE DELETE ON events
WHEN NOT EXISTS (SELECT 1 FROM event_mutation_gate)
BEGIN
    SELECT RAISE(ABORT, 'ow-es events are immutable (DELETE on events)');
END;

CREATE TABLE workflow_runs (
    namespace_id      TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    workflow_name     TEXT    NOT NULL,
    version           TEXT,
    status            TEXT    NOT NULL,
    input             TEXT,
    output            TEXT,
    error             TEXT,
    attempts          INTEGER NOT NULL DEFAULT 0,
    idempotency_key   TEXT,
    parent_run_id     TEXT,
    parent_step_name  TEXT,
    worker_id         TEXT,
    claim_token       TEXT,
    lease_until       TEXT,
    available_at      TEXT,
    deadline_at       TEXT,
    waiting_for       TEXT,
    seq               INTEGER NOT NULL,
    created_at        TEXT    NOT NULL,
    started_at        TEXT,
    finished_at       TEXT,
    updated_at        TEXT    NOT NULL,
    PRIMARY KEY (namespace_id, id)
);

CREATE UNIQUE INDEX workflow_runs_idempotency
    ON workflow_runs (namespace_id, workflow_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX workflow_runs_ready
    ON workflow_runs (namespace_id, available_at)
    WHERE status IN ('pending', 'running');
CREATE INDEX workflow_runs_leased
    ON workflow_runs (namespace_id, lease_until)
    WHERE lease_until IS NOT NULL;
CREATE INDEX workflow_runs_list ON workflow_runs (namespace_id, created_at DESC, id DESC);
CREATE INDEX workflow_runs_status_list
    ON workflow_runs (namespace_id, status, created_at DESC, id DESC);
CREATE INDEX workflow_runs_children
    ON workflow_runs (namespace_id, parent_run_id)
    WHERE parent_run_id IS NOT NULL;

CREATE TABLE step_attempts (
    namespace_id  TEXT    NOT NULL,
    run_id        TEXT    NOT NULL,
    step_name     TEXT    NOT NULL,
    attempt       INTEGER NOT NULL,
    kind          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    input         TEXT,
    output        TEXT,
    error         TEXT,
    child_run_id  TEXT,
    signal_name   TEXT,
    started_at    TEXT    NOT NULL,
    finished_at   TEXT,
    PRIMARY KEY (namespace_id, run_id, step_name, attempt)
);

CREATE INDEX step_attempts_open_signal_waits
    ON step_attempts (namespace_id, signal_name)
    WHERE kind = 'signal_wait' AND status = 'running';

CREATE TABLE signal_sends (
    namespace_id     TEXT NOT NULL,
    idempotency_key  TEXT NOT NULL,
    signal_name      TEXT NOT NULL,
    delivered_to     TEXT NOT NULL,
    created_at       TEXT NOT NULL,
    PRIMARY KEY (namespace_id, signal_name, idempotency_key)
);

CREATE TABLE reproject_state (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    cursor      TEXT    NOT NULL,
    started_at  TEXT    NOT NULL
);
