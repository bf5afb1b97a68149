-- Statements on `tasks` (store/tasks.py): the definition tools write, and the scheduler's state.
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: insert_task
INSERT INTO tasks (
    title, description, schedule_kind, schedule_expr, timezone, payload, priority,
    dedupe_key, dedupe_window_seconds, max_retries, backoff_strategy, backoff_base_seconds,
    backoff_max_seconds, concurrency_key, misfire_policy, misfire_grace_seconds, overlap_policy,
    pause_after_failures, "filter", probe, "when", status, next_fire_at, created_by, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22,
        $23, $24, $25, $25)
RETURNING *;

-- name: get_task
SELECT * FROM tasks WHERE id = $1;

-- name: get_task_for_update
SELECT * FROM tasks WHERE id = $1 FOR UPDATE;

-- name: list_tasks
-- Newest first, keyset-paginated on (created_at, id) so pages stay stable while tasks are added.
SELECT * FROM tasks
WHERE ($1::text IS NULL OR status = $1)
  AND ($2::text IS NULL OR schedule_kind = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
  -- An agent without admin lists only its own tasks.
  AND ($6::uuid IS NULL OR created_by = $6)
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: update_task_fields
-- update_task writes the whole validated definition back (the engine merged the changes into the
-- stored task and validated the result exactly as create_task does).
UPDATE tasks
SET title = $2, description = $3, schedule_kind = $4, schedule_expr = $5, timezone = $6, payload = $7,
    priority = $8, dedupe_key = $9, dedupe_window_seconds = $10, max_retries = $11,
    backoff_strategy = $12, backoff_base_seconds = $13, backoff_max_seconds = $14,
    concurrency_key = $15, misfire_policy = $16, misfire_grace_seconds = $17, overlap_policy = $18,
    pause_after_failures = $19, "filter" = $20, probe = $21, "when" = $22,
    status = $23, next_fire_at = $24, schedule_anchor = $25, snoozed_until = $26, updated_at = now(),
    -- A new probe or `when` starts from "false": the next true is an edge.
    probe_state = CASE WHEN probe IS DISTINCT FROM $21 OR "when" IS DISTINCT FROM $22 THEN NULL ELSE probe_state END
WHERE id = $1
RETURNING *;

-- name: lock_live_tasks_of_agent
-- The tasks of an agent that may still fire (active or snoozed: not paused, cancelled or
-- completed), locked, for delete_agent to pause.
SELECT * FROM tasks WHERE created_by = $1 AND status = 'active' ORDER BY created_at FOR UPDATE;

-- name: set_task_state
-- pause, resume, snooze, cancel: the scheduling state of one task, which the caller has locked.
-- (SET reads the row as it was.) Entering 'paused' records why ($5) and since when; leaving it
-- clears both and restarts the consecutive-failure count from now.
UPDATE tasks
SET status = $2, next_fire_at = $3, snoozed_until = $4, updated_at = now(),
    paused_reason = CASE WHEN $2 = 'paused' THEN coalesce($5, paused_reason) END,
    paused_at = CASE WHEN $2 <> 'paused' THEN NULL WHEN status = 'paused' THEN paused_at ELSE now() END,
    failures_counted_from = CASE WHEN status = 'paused' AND $2 <> 'paused' THEN now()
                                 ELSE failures_counted_from END
WHERE id = $1
RETURNING *;

-- name: consecutive_failures
-- The failed runs among the task's newest $3 finished ones (succeeded or failed; skipped and
-- cancelled runs neither break nor extend a streak) since $2, counted up to the first success.
-- Reads runs_task_finished: at most $3 rows, however long the task's history.
SELECT count(*) FILTER (WHERE before_success)
FROM (
    SELECT bool_and(status = 'failed') OVER (ORDER BY finished_at DESC) AS before_success
    FROM (
        SELECT status, finished_at
        FROM runs
        WHERE task_id = $1 AND status IN ('succeeded', 'failed')
          AND finished_at >= coalesce($2::timestamptz, '-infinity')
        ORDER BY finished_at DESC
        LIMIT $3
    ) newest
) recent;

-- name: claim_due_tasks
-- One scheduler pass takes up to $3 clock-driven tasks whose next fire is due by the horizon
-- ($1, or the transaction's now(), plus a look-ahead of $2 seconds), earliest first.
-- FOR UPDATE OF t SKIP LOCKED: several schedulers (one per serve/worker process) share the table;
-- each task is held by exactly one pass until it commits the new next_fire_at, and the others
-- pass over it instead of waiting. If a pass committed after our snapshot, Postgres re-reads the
-- row and re-checks the horizon, so a fire that was just handled is not handled again.
-- The lateral subquery answers the overlap question ("is a run of this task still active?") in
-- the same round trip; it reads runs_active_by_task.
WITH clock AS (SELECT coalesce($1::timestamptz, now()) AS now)
SELECT t.id, t.title, t.schedule_kind, t.schedule_expr, t.timezone,
       coalesce(t.schedule_anchor, t.created_at) AS anchor,
       t.next_fire_at, t.snoozed_until, t.priority, t.max_retries, t.dedupe_key, t.dedupe_window_seconds,
       t.concurrency_key,
       t.misfire_policy, t.misfire_grace_seconds, t.overlap_policy,
       active.ids AS active_ids, coalesce(active.running, false) AS active_running,
       clock.now AS now
FROM clock, tasks t
LEFT JOIN LATERAL (
    SELECT array_agg(r.id ORDER BY r.created_at) AS ids, bool_or(r.status = 'running') AS running
    FROM runs r
    WHERE r.task_id = t.id AND r.status IN ('queued', 'running')
) active ON true
WHERE t.status = 'active'
  AND t.schedule_kind IN ('cron', 'rrule', 'once')
  AND t.next_fire_at <= clock.now + make_interval(secs => $2::float8)
ORDER BY t.next_fire_at
LIMIT $3
FOR UPDATE OF t SKIP LOCKED;

-- name: advance_tasks
-- The other half of a pass, in the same transaction: each task's new next fire (NULL when its
-- schedule is exhausted, with status 'completed'), the newest fire that became a run, and the
-- end of a snooze that is over. updated_at moves only when the status does: firing is the
-- scheduler's state, not an edit of the task.
UPDATE tasks t
SET next_fire_at = u.next_fire_at,
    status = u.status,
    last_fired_at = coalesce(u.last_fired_at, t.last_fired_at),
    snoozed_until = CASE WHEN u.clear_snooze THEN NULL ELSE t.snoozed_until END,
    updated_at = CASE WHEN u.status <> t.status THEN now() ELSE t.updated_at END
FROM unnest($1::uuid[], $2::timestamptz[], $3::text[], $4::timestamptz[], $5::bool[])
    AS u(id, next_fire_at, status, last_fired_at, clear_snooze)
WHERE t.id = u.id;

-- name: next_due
-- When the scheduler must wake next: the earliest next fire of an active clock-driven task
-- (tasks_time_due answers it from the index's first entry), with the database clock so the
-- process sleeps for the right length whatever its own clock says.
SELECT (SELECT min(next_fire_at) FROM tasks
        WHERE status = 'active' AND schedule_kind IN ('cron', 'rrule', 'once')) AS next_due,
       clock_timestamp() AS now;
-- name: notify_task_changed
-- Delivered on commit: every scheduler re-reads when to wake.
SELECT pg_notify(:TASKS_CHANNEL, $1);

-- name: claim_due_conditions
-- Probers take due condition tasks like schedulers take fires: SKIP LOCKED, so replicas never
-- probe one task twice. The same statement moves next_fire_at past the probe's deadline (its
-- timeout_seconds, else $2, plus a margin of $3 seconds): a lease, so no other replica probes the
-- task while this one does (the row lock ends with this statement). That instant comes back as leased_until and fences the outcome's write;
-- due_at is the instant the probe was due, from which the next one is counted.
WITH due AS (
    SELECT id, next_fire_at AS due_at FROM tasks
    WHERE status = 'active' AND schedule_kind = 'condition' AND next_fire_at <= now()
      AND (snoozed_until IS NULL OR snoozed_until <= now())
    ORDER BY next_fire_at
    LIMIT $1
    FOR UPDATE SKIP LOCKED
)
UPDATE tasks t
SET next_fire_at = now() + make_interval(secs => coalesce((t.probe ->> 'timeout_seconds')::float8, $2::float8) + $3::float8)
FROM due
WHERE t.id = due.id
RETURNING t.*, due.due_at, t.next_fire_at AS leased_until;

-- name: record_probe
-- A probe's outcome and the next probe instant, written only while the prober still holds the
-- task (its lease instant is unchanged: a pause, an update or another prober did not intervene).
UPDATE tasks SET probe_state = $3, next_fire_at = $4, last_fired_at = coalesce($5, last_fired_at)
WHERE id = $1 AND next_fire_at = $2 AND status = 'active'
RETURNING id;

-- name: next_condition_due
SELECT extract(epoch FROM min(next_fire_at) - now()) FROM tasks
WHERE status = 'active' AND schedule_kind = 'condition' AND (snoozed_until IS NULL OR snoozed_until <= now());
