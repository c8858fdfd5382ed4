-- ow-es schema v5: retention forgets old signal idempotency keys, oldest first.
CREATE INDEX signal_sends_created ON signal_sends (namespace_id, created_at);
