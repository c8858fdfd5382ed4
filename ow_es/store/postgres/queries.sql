-- Queries of the PostgreSQL adapter. Connections have search_path = the ow-es schema.
-- Parameters are psycopg named placeholders.

-- name: begin_append
-- Appends hold the reproject gate shared; the statement also fixes the transaction's time.
SELECT pg_advisory_xact_lock_shared(%(gate)s), now() AS now

-- name: lock_runs
SELECT * FROM workflow_runs
WHERE namespace_id = %(ns)s AND id = ANY(%(ids)s)
ORDER BY id
FOR UPDATE

-- name: find_by_key
SELECT * FROM workflow_runs
WHERE namespace_id = %(ns)s AND workflow_name = %(name)s AND idempotency_key = %(key)s

-- name: within_limits
-- A ready run r that the limits in force let a claim take now (flow.held_back, in SQL): no
-- stored limits, or every limit with room. Held places and first claims are counted from the
-- runs themselves (workflow_runs_held, workflow_runs_started, workflow_runs_key_started).
-- A scalar subquery, not NOT EXISTS: the planner would turn that into an anti join, read every
-- ready run and sort them, where a filter keeps the index order and stops after LIMIT rows.
NOT coalesce((
    SELECT true FROM run_limits l
    WHERE l.namespace_id = r.namespace_id AND l.workflow_name = r.workflow_name
      AND (
        l.concurrency <= (
            SELECT count(*) FROM workflow_runs h
            WHERE h.namespace_id = r.namespace_id AND h.workflow_name = r.workflow_name
              AND h.claim_token IS NOT NULL)
        OR (r.key IS NOT NULL AND l.per_key <= (
            SELECT count(*) FROM workflow_runs h
            WHERE h.namespace_id = r.namespace_id AND h.workflow_name = r.workflow_name
              AND h.key = r.key AND h.claim_token IS NOT NULL))
        OR (r.started_at IS NULL AND l.rate_count <= (
            SELECT count(*) FROM workflow_runs s
            WHERE s.namespace_id = r.namespace_id AND s.workflow_name = r.workflow_name
              AND s.started_at > now() - make_interval(secs => l.rate_seconds)))
        OR (r.started_at IS NULL AND r.key IS NOT NULL AND l.per_key_rate_count <= (
            SELECT count(*) FROM workflow_runs s
            WHERE s.namespace_id = r.namespace_id AND s.workflow_name = r.workflow_name
              AND s.key = r.key
              AND s.started_at > now() - make_interval(secs => l.per_key_rate_seconds)))
      )
    LIMIT 1), false)

-- name: queued_runs
-- Runs ready without a timer (workflow_runs_queue, read in its order by priority then age):
-- the filters are written so the planner keeps the index order and stops after LIMIT rows
-- (an exact (name, version) pair test makes it under-estimate and sort the whole backlog,
-- and so would a due-time range it could take to workflow_runs_ready: "IS TRUE" keeps the
-- time a filter). The exact pairs are checked afterwards.
r.namespace_id = %(ns)s
  AND r.status IN ('pending', 'running') AND r.waiting_for IS NULL
  AND r.available_at IS NOT NULL AND (r.available_at <= now()) IS TRUE
  AND r.workflow_name = ANY(%(names)s::text[])
  AND (r.version = ANY(%(versions)s::text[]) OR (r.version IS NULL AND %(unversioned)s))

-- name: due_timers
-- Runs whose timer is due (sleeps, waits, retries), through workflow_runs_timers (per served
-- name, its range stops at now(): parked runs are never walked).
r.namespace_id = %(ns)s
  AND r.status IN ('pending', 'running') AND r.waiting_for IS NOT NULL
  AND r.available_at <= now()
  AND r.workflow_name = ANY(%(names)s::text[])
  AND (r.version = ANY(%(versions)s::text[]) OR (r.version IS NULL AND %(unversioned)s))

-- name: expired_leases
-- Runs whose worker's lease ran out (workflow_runs_leased); they hold their place already.
r.namespace_id = %(ns)s AND r.lease_until < now() AND r.status = 'running'
  AND r.workflow_name = ANY(%(names)s::text[])
  AND (r.version = ANY(%(versions)s::text[]) OR (r.version IS NULL AND %(unversioned)s))

-- name: claim_queued
-- Queued runs the limits let through, by priority then age.
SELECT r.* FROM workflow_runs r
WHERE
  -- include: queued_runs
  AND r.id <> ALL(%(taken)s::text[])
  AND
  -- include: within_limits
ORDER BY r.priority DESC, r.available_at
LIMIT %(limit)s
FOR UPDATE OF r SKIP LOCKED

-- name: claim_timers
-- Due timers the limits let through, by priority then age.
SELECT r.* FROM workflow_runs r
WHERE
  -- include: due_timers
  AND r.id <> ALL(%(taken)s::text[])
  AND
  -- include: within_limits
ORDER BY r.priority DESC, r.available_at
LIMIT %(limit)s
FOR UPDATE OF r SKIP LOCKED

-- name: lock_limits
-- The stored limits of the served workflows, locked for the claim: claims of a limited
-- workflow take turns, so two workers never both see its last free place.
SELECT * FROM run_limits
WHERE namespace_id = %(ns)s AND workflow_name = ANY(%(names)s::text[])
ORDER BY workflow_name
FOR UPDATE

-- name: flow_usage
-- Places held and first claims in the rate window, per limited workflow and per key.
SELECT l.workflow_name, NULL::text AS key,
       (SELECT count(*) FROM workflow_runs h
        WHERE h.namespace_id = l.namespace_id AND h.workflow_name = l.workflow_name
          AND h.claim_token IS NOT NULL) AS held,
       s.started, s.oldest_start
FROM run_limits l
LEFT JOIN LATERAL (
    SELECT count(*) AS started, min(started_at) AS oldest_start FROM workflow_runs s
    WHERE s.namespace_id = l.namespace_id AND s.workflow_name = l.workflow_name
      AND s.started_at > now() - make_interval(secs => l.rate_seconds)
) s ON true
WHERE l.namespace_id = %(ns)s AND l.workflow_name = ANY(%(names)s::text[])
UNION ALL
SELECT l.workflow_name, k.key,
       (SELECT count(*) FROM workflow_runs h
        WHERE h.namespace_id = l.namespace_id AND h.workflow_name = l.workflow_name
          AND h.key = k.key AND h.claim_token IS NOT NULL),
       s.started, s.oldest_start
FROM run_limits l
JOIN unnest(%(key_names)s::text[], %(keys)s::text[]) AS k(name, key) ON k.name = l.workflow_name
LEFT JOIN LATERAL (
    SELECT count(*) AS started, min(started_at) AS oldest_start FROM workflow_runs s
    WHERE s.namespace_id = l.namespace_id AND s.workflow_name = l.workflow_name
      AND s.key = k.key
      AND s.started_at > now() - make_interval(secs => l.per_key_rate_seconds)
) s ON true
WHERE l.namespace_id = %(ns)s

-- name: claim_expired
-- Expired leases, after the due runs (new work is preferred).
SELECT r.* FROM workflow_runs r
WHERE
  -- include: expired_leases
ORDER BY r.lease_until
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: select_overdue
-- Unclaimed runs past their deadline (their available_at is at most the deadline, so the
-- ready index finds them): failed even while every slot of the worker is busy.
SELECT r.* FROM workflow_runs r
WHERE r.namespace_id = %(ns)s
  AND r.status IN ('pending', 'running')
  AND r.available_at <= now()
  AND r.deadline_at <= now()
  AND r.claim_token IS NULL
  AND r.workflow_name = ANY(%(names)s::text[])
  AND (r.version = ANY(%(versions)s::text[]) OR (r.version IS NULL AND %(unversioned)s))
ORDER BY r.available_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED

-- name: open_attempts
SELECT * FROM step_attempts
WHERE namespace_id = %(ns)s AND run_id = ANY(%(ids)s) AND status = 'running'
ORDER BY run_id, started_at, step_name, attempt

-- name: heartbeat
-- The rows are locked in id order first, as every append locks them: a heartbeat and an
-- append of two runs can never wait for each other in opposite orders (a deadlock).
WITH held AS (
    SELECT r.id FROM workflow_runs r
    JOIN unnest(%(ids)s::text[], %(tokens)s::text[]) AS c(id, token)
      ON r.id = c.id AND r.claim_token = c.token
    WHERE r.namespace_id = %(ns)s AND r.status = 'running'
    ORDER BY r.id
    FOR UPDATE OF r
)
UPDATE workflow_runs r SET lease_until = now() + make_interval(secs => %(lease)s)
FROM held
WHERE r.namespace_id = %(ns)s AND r.id = held.id
RETURNING r.id

-- name: next_wake_at
SELECT
-- include: next_wake
AS wake_at

-- name: next_wake
-- The earliest future timer of the served workflows (a parked run: workflow_runs_timers; a
-- delayed start: workflow_runs_pending) or lease end: one index probe per workflow name,
-- however many runs of it or of other workflows are parked, and the first lease end of a served
-- pair. (A parked run of a version not served may wake the worker once, for nothing.) An
-- expression: the claim returns it too.
least(
    (SELECT min(t.at) FROM unnest(%(names)s::text[]) AS n(name), LATERAL (
         SELECT r.available_at AS at FROM workflow_runs r
         WHERE r.namespace_id = %(ns)s AND r.workflow_name = n.name
           AND r.status IN ('pending', 'running') AND r.waiting_for IS NOT NULL
           AND r.available_at > now()
         ORDER BY r.available_at LIMIT 1) AS t),
    (SELECT min(t.at) FROM unnest(%(names)s::text[]) AS n(name), LATERAL (
         SELECT r.available_at AS at FROM workflow_runs r
         WHERE r.namespace_id = %(ns)s AND r.workflow_name = n.name
           AND r.status = 'pending' AND r.available_at > now()
         ORDER BY r.available_at LIMIT 1) AS t),
    -- In lease order, the first of a served pair: not a walk over every run held.
    (SELECT r.lease_until FROM workflow_runs r
     WHERE r.namespace_id = %(ns)s AND r.lease_until > now()
       AND
       -- include: served_pair
     ORDER BY r.lease_until LIMIT 1)
)

-- name: get_run
SELECT * FROM workflow_runs WHERE namespace_id = %(ns)s AND id = %(id)s

-- name: list_children
SELECT * FROM workflow_runs WHERE namespace_id = %(ns)s AND parent_run_id = %(id)s
ORDER BY created_at, id

-- name: step_attempts
SELECT * FROM step_attempts WHERE namespace_id = %(ns)s AND run_id = %(id)s
ORDER BY started_at, step_name, attempt

-- name: run_events
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at
FROM events WHERE namespace_id = %(ns)s AND run_id = %(id)s AND seq > %(after)s
ORDER BY seq

-- name: read_log
-- Only events below the oldest transaction still in progress: nothing can commit behind them.
-- Ordered by the xid8 column itself (the text alias would sort 1000000 before 999999).
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at,
       tx_id::text AS tx_text
FROM events
WHERE (tx_id, position) > (%(tx)s::xid8, %(pos)s)
  AND tx_id < pg_snapshot_xmin(pg_current_snapshot())
  AND namespace_id = %(ns)s
ORDER BY tx_id, position
LIMIT %(limit)s

-- name: read_log_unguarded
-- Only where no append can be in flight (under the reproject gate).
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at,
       tx_id::text AS tx_text
FROM events
WHERE (tx_id, position) > (%(tx)s::xid8, %(pos)s) AND namespace_id = %(ns)s
ORDER BY tx_id, position
LIMIT %(limit)s

-- name: tx_ids_ahead
SELECT newest::text AS newest, next::text AS next, newest >= next AS ahead
FROM (SELECT (SELECT max(tx_id) FROM events) AS newest,
             pg_snapshot_xmax(pg_current_snapshot()) AS next) ids
WHERE newest IS NOT NULL

-- name: log_lag
SELECT coalesce(extract(epoch FROM now() - min(xact_start)), 0) AS lag
FROM pg_stat_activity
WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid()

-- name: count_runs
SELECT workflow_name, status, count(*) AS n FROM workflow_runs
WHERE namespace_id = %(ns)s GROUP BY workflow_name, status

-- name: list_runs
SELECT * FROM workflow_runs
WHERE namespace_id = %(ns)s
  AND (%(status)s::text IS NULL OR status = %(status)s)
  AND (%(workflow)s::text IS NULL OR workflow_name = %(workflow)s)
  AND (%(after_created)s::timestamptz IS NULL
       OR (created_at, id) < (%(after_created)s::timestamptz, %(after_id)s::text))
ORDER BY created_at DESC, id DESC
LIMIT %(limit)s

-- name: open_signal_waits
-- The open waits on a signal, their runs and step rows locked: a concurrent delivery or a
-- wait's timeout that commits first is seen on the re-check, so each wait gets one signal.
SELECT s.* FROM step_attempts s
JOIN workflow_runs r ON r.namespace_id = s.namespace_id AND r.id = s.run_id
WHERE s.namespace_id = %(ns)s AND s.kind = 'signal_wait' AND s.status = 'running'
  AND s.signal_name = %(signal)s AND r.status IN ('pending', 'running')
ORDER BY s.run_id, s.step_name
FOR UPDATE OF r, s

-- name: claim_signal_key
-- The first send with a key inserts it; a concurrent one waits for that commit, then sees it.
INSERT INTO signal_sends (namespace_id, signal_name, idempotency_key, delivered_to)
VALUES (%(ns)s, %(signal)s, %(key)s, '[]')
ON CONFLICT DO NOTHING
RETURNING 1

-- name: get_signal_send
SELECT delivered_to FROM signal_sends
WHERE namespace_id = %(ns)s AND signal_name = %(signal)s AND idempotency_key = %(key)s

-- name: put_signal_send
UPDATE signal_sends SET delivered_to = %(ids)s::jsonb
WHERE namespace_id = %(ns)s AND signal_name = %(signal)s AND idempotency_key = %(key)s

-- name: live_children
SELECT id FROM workflow_runs
WHERE namespace_id = %(ns)s AND parent_run_id = ANY(%(ids)s)
  AND status IN ('pending', 'running')
ORDER BY id

-- Monitoring (dashboard, metrics): indexed reads only.

-- name: ready_backlog
-- Through the partial workflow_runs_ready index (non-terminal rows only).
SELECT count(*) AS ready,
       coalesce(extract(epoch FROM now() - min(available_at)), 0) AS oldest_age
FROM workflow_runs
WHERE namespace_id = %(ns)s AND status IN ('pending', 'running') AND available_at <= now()

-- name: count_unowned
-- Non-terminal rows without a timer (workflow_runs_ready: available_at IS NULL), held by no
-- live lease and waiting for no signal or child.
SELECT count(*) AS n FROM workflow_runs
WHERE namespace_id = %(ns)s AND status IN ('pending', 'running') AND available_at IS NULL
  AND waiting_for IS NULL
  AND NOT (claim_token IS NOT NULL AND lease_until IS NOT NULL AND lease_until > now())

-- name: runs_per_minute
-- Created per minute (workflow_runs_list), ended per minute and status (workflow_runs_finished).
SELECT date_trunc('minute', created_at) AS minute, 'started' AS series, count(*) AS n
FROM workflow_runs
WHERE namespace_id = %(ns)s AND created_at >= now() - make_interval(mins => %(minutes)s)
GROUP BY 1
UNION ALL
SELECT date_trunc('minute', finished_at), status, count(*)
FROM workflow_runs
WHERE namespace_id = %(ns)s AND finished_at IS NOT NULL
  AND finished_at >= now() - make_interval(mins => %(minutes)s)
GROUP BY 1, 2

-- name: runs_by_key
-- The workflow names that have keyed runs, by a loose scan of workflow_runs_idempotency (one
-- index probe per name), then one probe per name for the key.
WITH RECURSIVE names(name) AS (
    SELECT (SELECT workflow_name FROM workflow_runs
            WHERE namespace_id = %(ns)s AND idempotency_key IS NOT NULL
            ORDER BY workflow_name LIMIT 1)
    UNION ALL
    SELECT (SELECT workflow_name FROM workflow_runs
            WHERE namespace_id = %(ns)s AND idempotency_key IS NOT NULL
              AND workflow_name > names.name
            ORDER BY workflow_name LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT r.* FROM names
JOIN workflow_runs r
  ON r.namespace_id = %(ns)s AND r.workflow_name = names.name AND r.idempotency_key = %(key)s
ORDER BY r.created_at DESC, r.id DESC

-- name: log_tail
-- The newest event below the read_log barrier (events_tx_order, backwards): every event
-- that commits later sorts after it.
SELECT tx_id::text AS tx_text, position FROM events
WHERE tx_id < pg_snapshot_xmin(pg_current_snapshot())
ORDER BY tx_id DESC, position DESC
LIMIT 1

-- name: events_at
-- Given events of given runs by (run id, seq), through the unique (namespace_id, run_id, seq).
SELECT e.namespace_id, e.run_id, e.position, e.seq, e.type, e.schema_version, e.data,
       e.created_at
FROM unnest(%(ids)s::text[], %(seqs)s::int[]) AS k(run_id, seq)
JOIN events e ON e.namespace_id = %(ns)s AND e.run_id = k.run_id AND e.seq = k.seq

-- Worker registry: coordination state, refreshed by each worker's heartbeat.

-- name: register_worker
INSERT INTO workers (namespace_id, id, host, pid, workflows, concurrency, busy, ttl_seconds,
                     started_at, heartbeat_at, lane)
VALUES (%(ns)s, %(id)s, %(host)s, %(pid)s, %(workflows)s::jsonb, %(concurrency)s, 0, %(ttl)s,
        now(), now(), %(lane)s)
ON CONFLICT (namespace_id, id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, workflows = excluded.workflows,
    concurrency = excluded.concurrency, ttl_seconds = excluded.ttl_seconds,
    heartbeat_at = now(), lane = excluded.lane
RETURNING id

-- name: expire_workers
DELETE FROM workers WHERE namespace_id = %(ns)s AND heartbeat_at < now() - interval '1 day'
RETURNING id

-- name: beat_worker
UPDATE workers SET heartbeat_at = now(), busy = %(busy)s
WHERE namespace_id = %(ns)s AND id = %(id)s
RETURNING id

-- name: forget_worker
DELETE FROM workers WHERE namespace_id = %(ns)s AND id = %(id)s
RETURNING id

-- name: live_workers
SELECT * FROM workers
WHERE namespace_id = %(ns)s AND heartbeat_at + make_interval(secs => ttl_seconds) > now()
ORDER BY started_at, id

-- name: unserved_runs
-- Ready runs (workflow_runs_ready) whose name and version no live worker serves.
WITH served AS (
    SELECT DISTINCT s.value->>0 AS name, s.value->>1 AS version
    FROM workers w, jsonb_array_elements(w.workflows) AS s(value)
    WHERE w.namespace_id = %(ns)s
      AND w.heartbeat_at + make_interval(secs => w.ttl_seconds) > now()
)
SELECT r.workflow_name, r.version, count(*) AS n FROM workflow_runs r
WHERE r.namespace_id = %(ns)s AND r.status IN ('pending', 'running')
  AND r.available_at <= now() AND r.claim_token IS NULL
  AND NOT EXISTS (SELECT 1 FROM served s
                  WHERE s.name = r.workflow_name AND s.version IS NOT DISTINCT FROM r.version)
GROUP BY r.workflow_name, r.version

-- name: stuck_runs
-- Held runs (workflow_runs_leased) with no event for longer than the threshold.
SELECT * FROM workflow_runs
WHERE namespace_id = %(ns)s AND lease_until IS NOT NULL AND status = 'running'
  AND updated_at < now() - make_interval(secs => %(seconds)s)
ORDER BY updated_at
LIMIT %(limit)s

-- Flow control: the limits in force (run_limits).

-- name: list_limits
SELECT * FROM run_limits WHERE namespace_id = %(ns)s ORDER BY workflow_name

-- name: get_limits
SELECT * FROM run_limits WHERE namespace_id = %(ns)s AND workflow_name = %(name)s

-- name: put_limits
-- Also a worker's declaration (``only_code``): it replaces limits that code stored, never an
-- operator's.
INSERT INTO run_limits (
    namespace_id, workflow_name, concurrency, per_key, rate, rate_count, rate_seconds,
    per_key_rate, per_key_rate_count, per_key_rate_seconds, source, updated_at
) VALUES (
    %(ns)s, %(name)s, %(concurrency)s, %(per_key)s, %(rate)s, %(rate_count)s, %(rate_seconds)s,
    %(per_key_rate)s, %(per_key_rate_count)s, %(per_key_rate_seconds)s, %(source)s, now()
)
ON CONFLICT (namespace_id, workflow_name) DO UPDATE SET
    concurrency = excluded.concurrency, per_key = excluded.per_key, rate = excluded.rate,
    rate_count = excluded.rate_count, rate_seconds = excluded.rate_seconds,
    per_key_rate = excluded.per_key_rate, per_key_rate_count = excluded.per_key_rate_count,
    per_key_rate_seconds = excluded.per_key_rate_seconds, source = excluded.source,
    updated_at = now()
WHERE NOT %(only_code)s
   OR (run_limits.source = 'code'
       AND (run_limits.concurrency, run_limits.per_key, run_limits.rate, run_limits.per_key_rate)
           IS DISTINCT FROM (excluded.concurrency, excluded.per_key, excluded.rate,
                             excluded.per_key_rate))
RETURNING workflow_name

-- name: clear_limits
-- ``only_code``: a worker whose code declares no limits removes those code stored.
DELETE FROM run_limits
WHERE namespace_id = %(ns)s AND workflow_name = %(name)s AND (NOT %(only_code)s OR source = 'code')
RETURNING workflow_name

-- name: ready_groups
-- Ready, unclaimed runs of the limited workflows (workflow_runs_ready), grouped.
SELECT r.workflow_name, r.key, r.started_at IS NULL AS fresh, count(*) AS count
FROM workflow_runs r
WHERE r.namespace_id = %(ns)s AND r.status IN ('pending', 'running')
  AND r.available_at <= now() AND r.claim_token IS NULL
  AND r.workflow_name IN (SELECT workflow_name FROM run_limits WHERE namespace_id = %(ns)s)
GROUP BY 1, 2, 3

-- name: claim_in_one
-- The claim in one statement (store/postgres/claim.py): ready runs by priority then age, then
-- expired leases, locked SKIP LOCKED; their rows updated as folding run_claimed does; their
-- events appended; the rows returned. The scans are the transaction path's (queued_runs,
-- due_timers, expired_leases) without its limits filter; the exact (name, version) pairs, and
-- whether to claim at all, are checked on the locked candidates.
-- Nothing is claimed, and the flags say why, while the append gate is taken or a served
-- workflow has stored limits; runs past their deadline are counted for fail_overdue; a claim
-- that leaves slots free returns the next timer (next_wake) as of its snapshot.
WITH
-- include: may_claim
queued AS (
    SELECT r.id, 0 AS tier, r.priority, r.available_at, r.deadline_at, r.workflow_name, r.version
    FROM workflow_runs r
    WHERE
    -- include: queued_runs
    ORDER BY r.priority DESC, r.available_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
),
timers AS (
    SELECT r.id, 0 AS tier, r.priority, r.available_at, r.deadline_at, r.workflow_name, r.version
    FROM workflow_runs r
    WHERE
    -- include: due_timers
    ORDER BY r.priority DESC, r.available_at
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
),
expired AS (
    SELECT r.id, 1 AS tier, 0 AS priority, r.lease_until AS available_at, r.deadline_at,
           r.workflow_name, r.version
    FROM workflow_runs r
    WHERE
    -- include: expired_leases
    ORDER BY r.lease_until
    LIMIT %(limit)s
    FOR UPDATE OF r SKIP LOCKED
),
picked AS (
    SELECT * FROM queued UNION ALL SELECT * FROM timers UNION ALL SELECT * FROM expired
    ORDER BY tier, priority DESC, available_at
    LIMIT %(limit)s
),
-- The claimed ids in claim order, as one array computed once: the candidates carry what the
-- checks need, so no join goes back to workflow_runs, and the update finds its rows by primary
-- key (a join there rescanned the candidates for every run of the namespace it walked).
chosen AS (
    SELECT array_agg(r.id ORDER BY r.tier, r.priority DESC, r.available_at) AS ids
    FROM picked r
    WHERE (r.deadline_at IS NULL OR r.deadline_at > now())
      AND (SELECT go FROM free)
      AND
      -- include: served_pair
),
-- include: claimed_rows
SELECT run.*, (SELECT held FROM gate) AS gate_held, (SELECT yes FROM limited) AS limited,
       (SELECT count(*) FROM picked WHERE deadline_at <= now()) AS overdue,
       -- A claim that leaves slots free tells when to look again (no read of its own after).
       CASE WHEN (SELECT count(*) FROM run) < %(limit)s THEN
-- include: next_wake
       END AS wake_at
FROM (SELECT 1) AS one LEFT JOIN run ON true
ORDER BY run.claim_order

-- name: claimed_by_tokens
-- The runs a one-statement claim whose reply was lost holds (its tokens were made client-side).
SELECT * FROM workflow_runs
WHERE namespace_id = %(ns)s AND claim_token = ANY(%(tokens)s::text[]) AND status = 'running'

-- name: served_pair
-- The row's exact (name, version) pair is served (a scalar subquery: see within_limits).
coalesce((
    SELECT true FROM unnest(%(pairs_names)s::text[], %(pairs_versions)s::text[]) AS p(name, version)
    WHERE p.name = r.workflow_name AND p.version = coalesce(r.version, '')
    LIMIT 1), false)

-- name: may_claim
-- The one-statement claims' first CTEs: whether they may claim at all (``go``): not while the
-- append gate is taken (a reproject swapping) or a served workflow has stored limits.
gate AS (SELECT pg_try_advisory_xact_lock_shared(%(gate)s) AS held),
limited AS (
    SELECT EXISTS (
        SELECT 1 FROM run_limits
        WHERE namespace_id = %(ns)s AND workflow_name = ANY(%(names)s::text[])) AS yes
),
free AS (SELECT (SELECT held FROM gate) AND NOT (SELECT yes FROM limited) AS go),

-- name: claimed_rows
-- The one-statement claims' last CTEs: the runs of ``chosen`` (its ids in claim order, a token
-- each) updated as folding run_claimed does, and their events appended.
run AS (
    UPDATE workflow_runs w SET
        status = 'running',
        worker_id = %(worker)s,
        claim_token = (%(tokens)s::text[])[array_position((SELECT ids FROM chosen), w.id)],
        lease_until = now() + make_interval(secs => %(lease)s),
        available_at = NULL,
        waiting_for = NULL,
        started_at = coalesce(w.started_at, now()),
        attempts = greatest(w.attempts, 1),
        seq = w.seq + 1,
        updated_at = now()
    WHERE w.namespace_id = %(ns)s AND w.id = ANY((SELECT ids FROM chosen)::text[])
    RETURNING w.*, array_position((SELECT ids FROM chosen), w.id) AS claim_order
),
event AS (
    INSERT INTO events (namespace_id, run_id, seq, type, schema_version, data, created_at)
    SELECT namespace_id, id, seq, 'run_claimed', %(schema_version)s,
           jsonb_build_object(
               'worker_id', worker_id,
               'claim_token', claim_token,
               'lease_until', to_char(lease_until AT TIME ZONE 'UTC',
                                      'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')),
           now()
    FROM run
)

-- name: claim_offered
-- The claim of the one run a lane wake-up named (store/postgres/claim.py): a primary-key
-- lookup instead of claim_in_one's three scans, taken only when it is the run claim_in_one
-- would take first (no queued run of a served workflow before it by priority then age, no
-- due timer). ``others``: more may be ready for the served workflows (a queued run, a due
-- timer, an expired lease): the caller claims with claim_in_one, at once. ``wake_at``: the
-- run's time, when it is due later (a delayed start: a new timer for the worker).
WITH
-- include: may_claim
offered AS (
    SELECT r.id, r.priority, r.available_at, r.deadline_at, r.waiting_for IS NULL AS queued
    FROM workflow_runs r
    WHERE r.namespace_id = %(ns)s AND r.id = %(id)s
      AND r.status IN ('pending', 'running') AND r.available_at IS NOT NULL
      AND
      -- include: served_pair
    FOR UPDATE OF r SKIP LOCKED
),
head AS (
    SELECT r.priority, r.available_at FROM workflow_runs r
    WHERE
    -- include: queued_runs
      AND r.id <> %(id)s
      AND
      -- include: served_pair
    ORDER BY r.priority DESC, r.available_at
    LIMIT 1
),
due AS (
    SELECT EXISTS (
        SELECT FROM workflow_runs r
        WHERE
        -- include: due_timers
    ) AS yes
),
expired AS (
    SELECT EXISTS (
        SELECT FROM workflow_runs r
        WHERE
        -- include: expired_leases
    ) AS yes
),
chosen AS (
    SELECT array_agg(o.id) AS ids
    FROM offered o
    WHERE o.queued AND o.available_at <= now()
      AND (o.deadline_at IS NULL OR o.deadline_at > now())
      AND (SELECT go FROM free) AND NOT (SELECT yes FROM due)
      AND NOT EXISTS (
          SELECT FROM head h
          WHERE h.priority > o.priority
             OR (h.priority = o.priority AND h.available_at < o.available_at))
),
-- include: claimed_rows
SELECT run.*, (SELECT held FROM gate) AS gate_held, (SELECT yes FROM limited) AS limited,
       (SELECT count(*) FROM offered WHERE available_at <= now() AND deadline_at <= now())
           AS overdue,
       EXISTS (SELECT FROM head) OR (SELECT yes FROM due) OR (SELECT yes FROM expired) AS others,
       (SELECT available_at FROM offered WHERE available_at > now()) AS wake_at
FROM (SELECT 1) AS one LEFT JOIN run ON true
