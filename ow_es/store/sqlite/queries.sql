-- Queries of the SQLite adapter. Times are ISO-8601 UTC text; '?' placeholders.
-- Workflow filters arrive as a JSON array of [name, version-or-empty] pairs.

-- name: lock_runs
SELECT * FROM workflow_runs
WHERE namespace_id = ? AND id IN (SELECT value FROM json_each(?))

-- name: insert_run
INSERT INTO workflow_runs (
    namespace_id, id, workflow_name, version, status, input, output, error, attempts,
    idempotency_key, parent_run_id, parent_step_name, worker_id, claim_token, lease_until,
    available_at, deadline_at, waiting_for, seq, created_at, started_at, finished_at, updated_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT DO NOTHING
RETURNING id

-- name: insert_event
INSERT INTO events (namespace_id, run_id, seq, type, schema_version, data, created_at)
VALUES (?, ?, ?, ?, ?, ?, ?)

-- name: upsert_step
INSERT INTO step_attempts (
    namespace_id, run_id, step_name, attempt, kind, status, input, output, error,
    child_run_id, signal_name, started_at, finished_at
) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (namespace_id, run_id, step_name, attempt) DO UPDATE SET
    kind = excluded.kind, status = excluded.status, input = excluded.input,
    output = excluded.output, error = excluded.error, child_run_id = excluded.child_run_id,
    signal_name = excluded.signal_name, started_at = excluded.started_at,
    finished_at = excluded.finished_at

-- name: find_by_key
SELECT * FROM workflow_runs WHERE namespace_id = ? AND workflow_name = ? AND idempotency_key = ?

-- name: claim_ready
SELECT * FROM workflow_runs
WHERE namespace_id = ?
  AND status IN ('pending', 'running')
  AND (available_at <= ? OR lease_until < ?)
  AND (workflow_name, coalesce(version, '')) IN (
      SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
ORDER BY available_at IS NULL, available_at
LIMIT ?

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
SELECT min(t) FROM (
    SELECT min(available_at) AS t FROM workflow_runs
    WHERE namespace_id = ? AND status IN ('pending', 'running') AND available_at > ?
      AND (workflow_name, coalesce(version, '')) IN (
          SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
    UNION ALL
    SELECT min(lease_until) FROM workflow_runs
    WHERE namespace_id = ? AND lease_until > ?
      AND (workflow_name, coalesce(version, '')) IN (
          SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(?))
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
                     started_at, heartbeat_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, 0, ?7, ?8, ?8)
ON CONFLICT (namespace_id, id) DO UPDATE SET
    host = excluded.host, pid = excluded.pid, workflows = excluded.workflows,
    concurrency = excluded.concurrency, ttl_seconds = excluded.ttl_seconds,
    heartbeat_at = excluded.heartbeat_at

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
