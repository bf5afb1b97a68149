-- Operations: failure handling per task, and retention of the history.

-- pause_after_failures: N pauses a task after N consecutive failed runs. paused_reason and paused_at
-- say why and since when a task is paused (by an agent, or by its failures); resume_task clears
-- them and restarts the count from that instant (failures_counted_from), so the failures that
-- paused the task do not pause it again.
ALTER TABLE tasks ADD COLUMN pause_after_failures integer CHECK (pause_after_failures >= 1);
ALTER TABLE tasks ADD COLUMN paused_reason text;
ALTER TABLE tasks ADD COLUMN paused_at timestamptz;
ALTER TABLE tasks ADD COLUMN failures_counted_from timestamptz;

-- A task's last finished runs, newest first: what the consecutive-failure count reads.
CREATE INDEX runs_task_finished ON runs (task_id, finished_at DESC) WHERE status IN ('succeeded', 'failed');

-- Retention deletes finished runs (their steps go with them, ON DELETE CASCADE), events and audit
-- entries older than their horizon, oldest first, in small batches.
CREATE INDEX runs_finished ON runs (finished_at)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'skipped');
CREATE INDEX events_created ON events (created_at);
CREATE INDEX audit_log_created ON audit_log (created_at);

-- A skipped duplicate points at its original (deduped_of). Pruning an original must not fail on
-- that reference, nor scan the table to find it: the reference is cleared, through an index.
ALTER TABLE runs DROP CONSTRAINT runs_deduped_of_fkey;
ALTER TABLE runs ADD CONSTRAINT runs_deduped_of_fkey
    FOREIGN KEY (deduped_of) REFERENCES runs (id) ON DELETE SET NULL;
CREATE INDEX runs_deduped_of ON runs (deduped_of) WHERE deduped_of IS NOT NULL;
