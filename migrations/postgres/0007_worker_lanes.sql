-- ow-es schema v7: each worker's own wake-up channel (its lane). A transaction that makes one
-- run ready notifies the lane of one live worker that serves it, instead of every worker
-- (store/postgres/lanes.py). NULL: a worker that has no lane, told only by broadcasts.
ALTER TABLE workers ADD COLUMN lane text;
