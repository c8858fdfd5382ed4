-- A history for phase (f) "scale" and tests/test_query_plans.py, written in SQL (fast), shaped
-- exactly as real runs of bench_workflows.seed_done and seed_sleep write it, so that a rebuild
-- of the projections (`ow-es reproject --verify`) finds nothing to change.
--
-- Run i of a batch is parked when i % park_every = park_every - 1, else terminal:
--
--   terminal (bench-seed-done, 9 events): run_created, run_claimed, six function steps
--     (step_completed noop-0..noop-5), run_completed (output 6); completed, one attempt.
--   parked (bench-seed-sleep, 10 events): the same six steps, then step_started of the sleep
--     step "nap" and run_sleeping until far in the future; running, no lease, waiting_for set.
--
-- Times: run i is created at base + i * spacing, its events 1 ms apart (a step's started_at
-- 0.5 ms before its record). JSON times are written the way msgspec encodes a UTC datetime
-- ("...T...Z", microseconds only when not zero), the sleep step's input as Python's
-- isoformat() ("+00:00"), as the engine writes them. One statement per batch: one transaction,
-- its events in time order. Parameters: psycopg named placeholders; connections have
-- search_path = the ow-es schema.

-- name: functions
CREATE OR REPLACE FUNCTION pg_temp.ow_seed_json_time(t timestamptz, zone text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT to_char(t AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS')
        || CASE WHEN extract(microseconds FROM t)::bigint % 1000000 = 0 THEN ''
                ELSE to_char(t AT TIME ZONE 'UTC', '.US') END
        || zone
$$

-- name: batch
WITH r AS (
    SELECT i,
           md5(%(salt)s::text || ':' || i) AS id,
           md5(%(salt)s::text || ':claim:' || i) AS token,
           i %% %(park_every)s::int = %(park_every)s::int - 1 AS parked,
           %(base)s::timestamptz + i * make_interval(secs => %(spacing)s) AS t,
           %(wake)s::timestamptz + i * interval '1 second' AS wake
    FROM generate_series(%(first)s::int, %(last)s::int) AS i
),
step AS (
    SELECT r.*, k, r.t + (2 + k) * interval '1 millisecond' AS done_at
    FROM r, generate_series(0, 5) AS k
),
runs AS (
    INSERT INTO workflow_runs (
        namespace_id, id, workflow_name, version, status, input, output, error, attempts,
        idempotency_key, parent_run_id, parent_step_name, worker_id, claim_token, lease_until,
        available_at, deadline_at, waiting_for, seq, created_at, started_at, finished_at,
        updated_at
    )
    SELECT %(ns)s::text, id,
           CASE WHEN parked THEN 'bench-seed-sleep' ELSE 'bench-seed-done' END,
           NULL, CASE WHEN parked THEN 'running' ELSE 'completed' END,
           NULL, CASE WHEN parked THEN NULL ELSE '6'::jsonb END, NULL, 1,
           CASE WHEN NOT parked AND i %% 10 = 0 THEN 'seed-' || i END, NULL, NULL,
           NULL, NULL, NULL,
           CASE WHEN parked THEN wake END, NULL,
           CASE WHEN parked THEN jsonb_build_object(
               'kind', 'sleep', 'step', 'nap', 'until', pg_temp.ow_seed_json_time(wake, 'Z'))
           END,
           CASE WHEN parked THEN 10 ELSE 9 END,
           t, t + interval '1 millisecond',
           CASE WHEN parked THEN NULL ELSE t + interval '8 milliseconds' END,
           t + CASE WHEN parked THEN interval '9 milliseconds' ELSE interval '8 milliseconds' END
    FROM r
    RETURNING 1
),
steps AS (
    INSERT INTO step_attempts (
        namespace_id, run_id, step_name, attempt, kind, status, input, output, error,
        child_run_id, signal_name, started_at, finished_at
    )
    SELECT %(ns)s::text, id, 'noop-' || k, 1, 'function', 'completed', NULL::jsonb, NULL::jsonb,
           NULL::jsonb, NULL::text, NULL::text, done_at - interval '500 microseconds', done_at
    FROM step
    UNION ALL
    SELECT %(ns)s::text, id, 'nap', 1, 'sleep', 'running',
           jsonb_build_object('until', pg_temp.ow_seed_json_time(wake, '+00:00')),
           NULL, NULL, NULL, NULL, t + interval '8 milliseconds', NULL
    FROM r WHERE parked
    RETURNING 1
),
log AS (
    SELECT id, 1 AS seq, 'run_created' AS type, t AS at, jsonb_build_object(
               'workflow_name', CASE WHEN parked THEN 'bench-seed-sleep'
                                     ELSE 'bench-seed-done' END,
               'version', NULL, 'input', NULL,
               'idempotency_key', CASE WHEN NOT parked AND i %% 10 = 0 THEN 'seed-' || i END,
               'parent_run_id', NULL, 'parent_step_name', NULL,
               'available_at', pg_temp.ow_seed_json_time(t - interval '300 microseconds', 'Z'),
               'deadline_at', NULL) AS data
    FROM r
    UNION ALL
    SELECT id, 2, 'run_claimed', t + interval '1 millisecond', jsonb_build_object(
               'worker_id', %(worker)s::text, 'claim_token', token,
               'lease_until', pg_temp.ow_seed_json_time(t + interval '30.001 seconds', 'Z'))
    FROM r
    UNION ALL
    SELECT id, 3 + k, 'step_completed', done_at, jsonb_build_object(
               'step_name', 'noop-' || k, 'kind', 'function', 'attempt', 1, 'output', NULL,
               'started_at', pg_temp.ow_seed_json_time(done_at - interval '500 microseconds', 'Z'),
               'worker_id', %(worker)s::text, 'child_run_id', NULL, 'signal_name', NULL)
    FROM step
    UNION ALL
    SELECT id, 9, 'run_completed', t + interval '8 milliseconds',
           jsonb_build_object('output', 6, 'worker_id', %(worker)s::text)
    FROM r WHERE NOT parked
    UNION ALL
    SELECT id, 9, 'step_started', t + interval '8 milliseconds', jsonb_build_object(
               'step_name', 'nap', 'kind', 'sleep', 'attempt', 1, 'worker_id', %(worker)s::text,
               'input', jsonb_build_object(
                   'until', pg_temp.ow_seed_json_time(wake, '+00:00')),
               'child_run_id', NULL, 'signal_name', NULL)
    FROM r WHERE parked
    UNION ALL
    SELECT id, 10, 'run_sleeping', t + interval '9 milliseconds', jsonb_build_object(
               'step_name', 'nap', 'until', pg_temp.ow_seed_json_time(wake, 'Z'),
               'worker_id', %(worker)s::text)
    FROM r WHERE parked
),
events_written AS (
    INSERT INTO events (namespace_id, run_id, seq, type, schema_version, data, created_at)
    SELECT %(ns)s::text, id, seq, type, 1, data, at FROM log ORDER BY at, id, seq
    RETURNING 1
)
SELECT (SELECT count(*) FROM runs) AS runs,
       (SELECT count(*) FROM steps) AS steps,
       (SELECT count(*) FROM events_written) AS events
