-- Queries of the SQLite adapter. Times are ISO-8601 UTC text; '?' placeholders.
-- Workflow filters arrive as a JSON array of [name, version-or-empty] pairs.

-- name: lock_runs
SELECT * FROM workflow_runs
WHERE namespace_id = ? AND id IN (SELECT value FROM json_each(?))

-- name: find_by_key
SELECT * FROM workflow_runs WHERE namespace_id = ? AND workflow_name = ? AND idempotency_key = ?

-- name: within_limits
-- A ready run r that the limits in force let a claim take now (flow.held_back, in SQL): no
-- stored limits, or every limit with room. Held places and first claims are counted from the
-- runs themselves; the rate window starts at :now less the period (text order is time order).
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
              AND s.started_at IS NOT NULL
              AND s.started_at > strftime('%Y-%m-%dT%H:%M:%f', :now,
                                          '-' || l.rate_seconds || ' seconds')))
        OR (r.started_at IS NULL AND r.key IS NOT NULL AND l.per_key_rate_count <= (
            SELECT count(*) FROM workflow_runs s
            WHERE s.namespace_id = r.namespace_id AND s.workflow_name = r.workflow_name
              AND s.key = r.key AND s.started_at IS NOT NULL
              AND s.started_at > strftime('%Y-%m-%dT%H:%M:%f', :now,
                                          '-' || l.per_key_rate_seconds || ' seconds')))
      )
    LIMIT 1), false)

-- name: claim_queued
-- Runs ready without a timer, by priority then age (workflow_runs_queue, in index order).
SELECT r.* FROM workflow_runs r INDEXED BY workflow_runs_queue
WHERE r.namespace_id = :ns
  AND r.status IN ('pending', 'running') AND r.waiting_for IS NULL
  AND r.available_at IS NOT NULL AND r.available_at <= :now
  AND (r.workflow_name, coalesce(r.version, '')) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:workflows))
  AND r.id NOT IN (SELECT value FROM json_each(:taken))
  AND
  -- include: within_limits
ORDER BY r.priority DESC, r.available_at
LIMIT :limit

-- name: claim_timers
-- Runs whose timer is due (workflow_runs_timers: the range stops at :now), by priority.
SELECT r.* FROM workflow_runs r INDEXED BY workflow_runs_timers
WHERE r.namespace_id = :ns
  AND r.status IN ('pending', 'running') AND r.waiting_for IS NOT NULL
  AND r.workflow_name IN (SELECT value FROM json_each(:names)) AND r.available_at <= :now
  AND (r.workflow_name, coalesce(r.version, '')) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:workflows))
  AND r.id NOT IN (SELECT value FROM json_each(:taken))
  AND
  -- include: within_limits
ORDER BY r.priority DESC, r.available_at
LIMIT :limit

-- name: claim_expired
-- Runs whose worker's lease ran out (they hold their place already: no limit applies).
SELECT r.* FROM workflow_runs r
WHERE r.namespace_id = :ns AND r.lease_until < :now AND r.status = 'running'
  AND (r.workflow_name, coalesce(r.version, '')) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:workflows))
ORDER BY r.lease_until
LIMIT :limit

-- name: claim_candidates
-- A claim's three reads in one statement (one trip to aiosqlite's thread, not three): the
-- ready runs (``tier`` 0: queued, then due timers) and the expired leases (``tier`` 1), each
-- part in its own index order and within its own limit.
SELECT 0 AS tier, * FROM (
-- include: claim_queued
)
UNION ALL
SELECT 0 AS tier, * FROM (
-- include: claim_timers
)
UNION ALL
SELECT 1 AS tier, * FROM (
-- include: claim_expired
)

-- name: served_limits
SELECT * FROM run_limits
WHERE namespace_id = ? AND workflow_name IN (SELECT value FROM json_each(?))
ORDER BY workflow_name

-- name: flow_usage
-- Places held and first claims in the rate window, per limited workflow and per key.
WITH wanted(name, key) AS (
    SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:pairs)
)
SELECT l.workflow_name, w.key,
       (SELECT count(*) FROM workflow_runs h
        WHERE h.namespace_id = l.namespace_id AND h.workflow_name = l.workflow_name
          AND h.claim_token IS NOT NULL AND (w.key IS NULL OR h.key = w.key)) AS held,
       (SELECT count(*) FROM workflow_runs s
        WHERE s.namespace_id = l.namespace_id AND s.workflow_name = l.workflow_name
          AND (w.key IS NULL OR s.key = w.key) AND s.started_at IS NOT NULL
          AND s.started_at > strftime('%Y-%m-%dT%H:%M:%f', :now, '-' || (CASE WHEN w.key IS NULL
              THEN l.rate_seconds ELSE l.per_key_rate_seconds END) || ' seconds')) AS started,
       (SELECT min(s.started_at) FROM workflow_runs s
        WHERE s.namespace_id = l.namespace_id AND s.workflow_name = l.workflow_name
          AND (w.key IS NULL OR s.key = w.key) AND s.started_at IS NOT NULL
          AND s.started_at > strftime('%Y-%m-%dT%H:%M:%f', :now, '-' || (CASE WHEN w.key IS NULL
              THEN l.rate_seconds ELSE l.per_key_rate_seconds END) || ' seconds')) AS oldest_start
FROM run_limits l JOIN wanted w ON w.name = l.workflow_name
WHERE l.namespace_id = :ns

-- name: select_overdue
SELECT * FROM workflow_runs
WHERE namespace_id = ?
  AND status IN ('pending', 'running')
  AND available_at <= ?
  AND deadline_at <= ?
  AND claim_token IS NULL
  AND (workflow_name, coalesce(version, '')) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
ORDER BY available_at
LIMIT ?

-- name: open_attempts
SELECT * FROM step_attempts
WHERE namespace_id = ? AND run_id IN (SELECT value FROM json_each(?)) AND status = 'running'
ORDER BY run_id, started_at, step_name, attempt

-- name: heartbeat
UPDATE workflow_runs SET lease_until = ?
WHERE namespace_id = ? AND status = 'running'
  AND (id, claim_token) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
RETURNING id

-- name: next_wake_at
-- As PostgreSQL's: one index probe per served name (workflow_runs_timers, _pending, _leased).
SELECT min(t) FROM (
    SELECT (SELECT r.available_at FROM workflow_runs r INDEXED BY workflow_runs_timers
            WHERE r.namespace_id = :ns AND r.workflow_name = n.value
              AND r.status IN ('pending', 'running') AND r.waiting_for IS NOT NULL
              AND r.available_at > :now
            ORDER BY r.available_at LIMIT 1) AS t
    FROM json_each(:names) AS n
    UNION ALL
    SELECT (SELECT r.available_at FROM workflow_runs r INDEXED BY workflow_runs_pending
            WHERE r.namespace_id = :ns AND r.workflow_name = n.value
              AND r.status = 'pending' AND r.available_at > :now
            ORDER BY r.available_at LIMIT 1)
    FROM json_each(:names) AS n
    UNION ALL
    SELECT min(lease_until) FROM workflow_runs
    WHERE namespace_id = :ns AND lease_until > :now
      AND (workflow_name, coalesce(version, '')) IN (
          SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:workflows))
)

-- name: get_run
SELECT * FROM workflow_runs WHERE namespace_id = ? AND id = ?

-- name: list_children
SELECT * FROM workflow_runs WHERE namespace_id = ? AND parent_run_id = ?
ORDER BY created_at, id

-- name: step_attempts
SELECT * FROM step_attempts WHERE namespace_id = ? AND run_id = ?
ORDER BY started_at, step_name, attempt

-- name: run_events
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at
FROM events WHERE namespace_id = ? AND run_id = ? AND seq > ? ORDER BY seq

-- name: read_log
-- Writers are serialised, so positions commit in order and position > last is safe here.
SELECT namespace_id, run_id, position, seq, type, schema_version, data, created_at
FROM events WHERE position > ? AND namespace_id = ? ORDER BY position LIMIT ?

-- name: list_runs
SELECT * FROM workflow_runs
WHERE namespace_id = ?
  AND (? IS NULL OR status = ?)
  AND (? IS NULL OR workflow_name = ?)
  AND (? IS NULL OR (created_at, id) < (?, ?))
ORDER BY created_at DESC, id DESC
LIMIT ?

-- name: count_runs
SELECT workflow_name, status, count(*) AS n FROM workflow_runs
WHERE namespace_id = ? GROUP BY workflow_name, status

-- name: open_signal_waits
SELECT s.* FROM step_attempts s
JOIN workflow_runs r ON r.namespace_id = s.namespace_id AND r.id = s.run_id
WHERE s.namespace_id = ? AND s.kind = 'signal_wait' AND s.status = 'running'
  AND s.signal_name = ? AND r.status IN ('pending', 'running')
ORDER BY s.run_id, s.step_name

-- name: claim_signal_key
INSERT INTO signal_sends (namespace_id, signal_name, idempotency_key, delivered_to, created_at)
VALUES (?, ?, ?, '[]', ?)
ON CONFLICT DO NOTHING
RETURNING 1

-- name: get_signal_send
SELECT delivered_to FROM signal_sends
WHERE namespace_id = ? AND signal_name = ? AND idempotency_key = ?

-- name: put_signal_send
UPDATE signal_sends SET delivered_to = ?
WHERE namespace_id = ? AND signal_name = ? AND idempotency_key = ?

-- name: live_children
SELECT id FROM workflow_runs
WHERE namespace_id = ? AND parent_run_id IN (SELECT value FROM json_each(?))
  AND status IN ('pending', 'running')
ORDER BY id

-- Monitoring (dashboard, metrics): indexed reads only. ?1 is the namespace.

-- name: ready_backlog
-- Through the partial workflow_runs_ready index (non-terminal rows only); ?2 = now.
SELECT count(*) AS ready, min(available_at) AS oldest FROM workflow_runs
WHERE namespace_id = ?1 AND status IN ('pending', 'running') AND available_at <= ?2

-- name: count_unowned
-- ?2 = now.
SELECT count(*) AS n FROM workflow_runs
WHERE namespace_id = ?1 AND status IN ('pending', 'running') AND available_at IS NULL
  AND waiting_for IS NULL
  AND NOT (claim_token IS NOT NULL AND lease_until IS NOT NULL AND lease_until > ?2)

-- name: runs_per_minute
-- ?2 = the start of the window; times are fixed-width text, so the first 16 characters are
-- the minute.
SELECT substr(created_at, 1, 16) AS minute, 'started' AS series, count(*) AS n
FROM workflow_runs
WHERE namespace_id = ?1 AND created_at >= ?2
GROUP BY 1
UNION ALL
SELECT substr(finished_at, 1, 16), status, count(*)
FROM workflow_runs
WHERE namespace_id = ?1 AND finished_at IS NOT NULL AND finished_at >= ?2
GROUP BY 1, 2

-- name: runs_by_key
-- ?2 = the key. Names with keyed runs by a loose scan of workflow_runs_idempotency.
WITH RECURSIVE names(name) AS (
    SELECT (SELECT workflow_name FROM workflow_runs
            WHERE namespace_id = ?1 AND idempotency_key IS NOT NULL
            ORDER BY workflow_name LIMIT 1)
    UNION ALL
    SELECT (SELECT workflow_name FROM workflow_runs
            WHERE namespace_id = ?1 AND idempotency_key IS NOT NULL
              AND workflow_name > names.name
            ORDER BY workflow_name LIMIT 1)
    FROM names WHERE names.name IS NOT NULL
)
SELECT r.* FROM names
JOIN workflow_runs r
  ON r.namespace_id = ?1 AND r.workflow_name = names.name AND r.idempotency_key = ?2
ORDER BY r.created_at DESC, r.id DESC

-- name: log_tail
SELECT max(position) AS position FROM events

-- name: events_at
-- ?2 = [[run id, seq], ...] as JSON.
SELECT e.namespace_id, e.run_id, e.position, e.seq, e.type, e.schema_version, e.data,
       e.created_at
FROM json_each(?2) AS k
JOIN events e ON e.namespace_id = ?1 AND e.run_id = json_extract(k.value, '$[0]')
             AND e.seq = json_extract(k.value, '$[1]')

-- Worker registry: coordination state, refreshed by each worker's heartbeat.

-- name: register_worker
INSERT INTO workers (namespace_id, id, host, pid, workflows, concurrency, busy, ttl_seconds,
                     started_at, heartbeat_at, lane)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?8, ?9)
ON CONFLICT (namespace_id, id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, workflows = excluded.workflows,
    concurrency = excluded.concurrency, ttl_seconds = excluded.ttl_seconds,
    heartbeat_at = excluded.heartbeat_at, lane = excluded.lane

-- name: expire_workers
DELETE FROM workers WHERE namespace_id = ?1 AND heartbeat_at < ?2

-- name: beat_worker
UPDATE workers SET heartbeat_at = ?3, busy = ?4 WHERE namespace_id = ?1 AND id = ?2

-- name: forget_worker
DELETE FROM workers WHERE namespace_id = ?1 AND id = ?2

-- name: all_workers
-- Which are live is decided in Python, with the clock every SQLite time comes from.
SELECT * FROM workers WHERE namespace_id = ?1 ORDER BY started_at, id

-- name: ready_by_workflow
SELECT workflow_name, version, count(*) AS n FROM workflow_runs
WHERE namespace_id = ?1 AND status IN ('pending', 'running')
  AND available_at <= ?2 AND claim_token IS NULL
GROUP BY workflow_name, version

-- name: stuck_runs
SELECT * FROM workflow_runs
WHERE namespace_id = ?1 AND lease_until IS NOT NULL AND status = 'running'
  AND updated_at < ?2
ORDER BY updated_at
LIMIT ?3

-- Flow control: the limits in force (run_limits).

-- name: list_limits
SELECT * FROM run_limits WHERE namespace_id = :ns ORDER BY workflow_name

-- name: get_limits
SELECT * FROM run_limits WHERE namespace_id = :ns AND workflow_name = :name

-- name: put_limits
-- Also a worker's declaration (``only_code``): it replaces limits that code stored, never an
-- operator's.
INSERT INTO run_limits (
    namespace_id, workflow_name, concurrency, per_key, rate, rate_count, rate_seconds,
    per_key_rate, per_key_rate_count, per_key_rate_seconds, source, updated_at
) VALUES (
    :ns, :name, :concurrency, :per_key, :rate, :rate_count, :rate_seconds,
    :per_key_rate, :per_key_rate_count, :per_key_rate_seconds, :source, :now
)
ON CONFLICT (namespace_id, workflow_name) DO UPDATE SET
    concurrency = excluded.concurrency, per_key = excluded.per_key, rate = excluded.rate,
    rate_count = excluded.rate_count, rate_seconds = excluded.rate_seconds,
    per_key_rate = excluded.per_key_rate, per_key_rate_count = excluded.per_key_rate_count,
    per_key_rate_seconds = excluded.per_key_rate_seconds, source = excluded.source,
    updated_at = excluded.updated_at
WHERE NOT :only_code
   OR (run_limits.source = 'code'
       AND (run_limits.concurrency, run_limits.per_key, run_limits.rate, run_limits.per_key_rate)
           IS NOT (excluded.concurrency, excluded.per_key, excluded.rate, excluded.per_key_rate))

-- name: clear_limits
DELETE FROM run_limits
WHERE namespace_id = :ns AND workflow_name = :name AND (NOT :only_code OR source = 'code')
RETURNING workflow_name

-- name: ready_groups
SELECT r.workflow_name, r.key, r.started_at IS NULL AS fresh, count(*) AS count
FROM workflow_runs r
WHERE r.namespace_id = :ns AND r.status IN ('pending', 'running')
  AND r.available_at <= :now AND r.claim_token IS NULL
  AND r.workflow_name IN (SELECT workflow_name FROM run_limits WHERE namespace_id = :ns)
GROUP BY 1, 2, 3
