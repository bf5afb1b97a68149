-- Scheduling: the anchor an rrule without DTSTART counts from, and the scheduler's own index.

-- An rrule without DTSTART starts at the task's anchor. It is the creation instant until
-- update_task changes the schedule; then the new rule counts from the update (COUNT=5 means five
-- more fires, not five since the task was first created). NULL means "created_at".
ALTER TABLE tasks ADD COLUMN schedule_anchor timestamptz;

-- The scheduler asks "which active clock-driven tasks are due, earliest first" and "when is the
-- next one due". Condition tasks also carry next_fire_at (their poll instant) but are evaluated
-- elsewhere; keeping them out of this index keeps both questions one index probe.
CREATE INDEX tasks_time_due ON tasks (next_fire_at)
    WHERE status = 'active' AND schedule_kind IN ('cron', 'rrule', 'once');
