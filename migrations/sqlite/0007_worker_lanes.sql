-- ow-es schema v7: each worker's own wake-up channel (its lane), as on PostgreSQL. SQLite has
-- no lanes (its wake-ups are in-process, and workers poll): the column stays NULL, and keeps
-- the two schemas alike.
ALTER TABLE workers ADD COLUMN lane TEXT;
