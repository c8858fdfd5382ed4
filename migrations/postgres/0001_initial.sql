-- ow-es schema v1: the event log and its inline projections.
-- Runs with search_path set to the target schema.

CREATE TABLE events (
    position        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    namespace_id    text        NOT NULL,
    run_id          text        NOT NULL,
    seq             integer     NOT NULL,
    type            text        NOT NULL,
    schema_version  smallint    NOT NULL DEFAULT 1,
    data            jsonb       NOT NULL,
    tx_id           xid8        NOT NULL DEFAULT pg_current_xact_id(),
    created_at      timestamptz NOT NULL DEFAULT now(),
    UNIQUE (namespace_id, run_id, seq)
);

-- Async consumers read the log in (tx_id, position) order behind the snapshot barrier.
CREATE INDEX events_tx_order ON events (tx_id, position);

-- The log is immutable; only retention may delete, after SET LOCAL ow_es.allow_event_mutation = 'on'.
CREATE FUNCTION reject_event_mutation() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('ow_es.allow_event_mutation', true), '') = 'on' THEN
        RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
    END IF;
    RAISE EXCEPTION 'ow-es events are immutable (% on %.events)', TG_OP, TG_TABLE_SCHEMA
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER events_immutable BEFORE UPDATE OR DELETE ON events
    FOR EACH ROW EXECUTE FUNCTION reject_event_mutation();
CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION reject_event_mutation();

CREATE TABLE workflow_runs (
    namespace_id      text        NOT NULL,
    id                text        NOT NULL,
    workflow_name     text        NOT NULL,
    version           text,
    status            text        NOT NULL,
    input             jsonb,
    output            jsonb,
    error             jsonb,
    attempts          integer     NOT NULL DEFAULT 0,
    idempotency_key   text,
    parent_run_id     text,
    parent_step_name  text,
    worker_id         text,
    claim_token       text,
    lease_until       timestamptz,
    available_at      timestamptz,
    deadline_at       timestamptz,
    waiting_for       jsonb,
    seq               integer     NOT NULL,
    created_at        timestamptz NOT NULL,
    started_at        timestamptz,
    finished_at       timestamptz,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (namespace_id, id)
);

CREATE UNIQUE INDEX workflow_runs_idempotency
    ON workflow_runs (namespace_id, workflow_name, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
-- Claim query: only non-terminal rows, so its cost does not grow with history.
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
    namespace_id  text        NOT NULL,
    run_id        text        NOT NULL,
    step_name     text        NOT NULL,
    attempt       integer     NOT NULL,
    kind          text        NOT NULL,
    status        text        NOT NULL,
    input         jsonb,
    output        jsonb,
    error         jsonb,
    child_run_id  text,
    signal_name   text,
    started_at    timestamptz NOT NULL,
    finished_at   timestamptz,
    PRIMARY KEY (namespace_id, run_id, step_name, attempt)
);

-- Signal delivery looks up the open waits on a name.
CREATE INDEX step_attempts_open_signal_waits
    ON step_attempts (namespace_id, signal_name)
    WHERE kind = 'signal_wait' AND status = 'running';

-- Deduplicates client-sent signals by (signal name, idempotency key) (coordination, not history).
CREATE TABLE signal_sends (
    namespace_id     text        NOT NULL,
    idempotency_key  text        NOT NULL,
    signal_name      text        NOT NULL,
    delivered_to     jsonb       NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (namespace_id, signal_name, idempotency_key)
);

-- Progress of an interrupted `ow-es reproject`, so it resumes where it stopped.
CREATE TABLE reproject_state (
    id          integer     PRIMARY KEY CHECK (id = 1),
    cursor      text        NOT NULL,
    started_at  timestamptz NOT NULL DEFAULT now()
);
