-- ow-es schema v2: an index for the dashboard's runs-ended-per-minute chart.
-- Partial: a row enters it only when its run ends, so the write path barely notices it.
CREATE INDEX workflow_runs_finished
    ON workflow_runs (namespace_id, finished_at)
    WHERE finished_at IS NOT NULL;
