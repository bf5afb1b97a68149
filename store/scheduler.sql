-- Statements of the scheduler (engine/scheduler.py) and of the task life-cycle tools
-- (engine/lifecycle.py). Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

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

-- name: insert_schedule_runs
-- Every fire decided in a pass, in one statement: runs to execute ('queued') and the fires that
-- were skipped, coalesced or suppressed ('skipped', with the reason), so list_runs tells why.
-- ON CONFLICT on runs_one_per_fire: a (task, instant) that already has a row keeps it; a second
-- scheduler can never double a fire, whatever it computed.
-- A queued run becomes claimable at its scheduled instant (available_at); runs already due wake
-- the workers now (the NOTIFY is delivered on commit), runs created ahead of their instant are
-- released by the scheduler's own NOTIFY at that instant.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::int[], $6::text[],
                         $7::text[], $8::bool[])
        AS i(task_id, status, scheduled_for, priority, max_attempts, reason, concurrency_key, catch_up)
), inserted AS (
    INSERT INTO runs (task_id, status, trigger, trigger_data, scheduled_for, priority, concurrency_key,
                      max_attempts, available_at, reason, finished_at)
    SELECT task_id, status, 'schedule',
           CASE WHEN catch_up THEN '{"catch_up": true}'::jsonb ELSE '{}'::jsonb END,
           scheduled_for, priority, concurrency_key, max_attempts, scheduled_for, reason,
           CASE WHEN status <> 'queued' THEN now() END
    FROM input
    ON CONFLICT (task_id, scheduled_for) WHERE trigger = 'schedule' DO NOTHING
    RETURNING id, task_id, status, scheduled_for
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '')
    WHERE EXISTS (SELECT 1 FROM inserted WHERE status = 'queued' AND scheduled_for <= now())
)
SELECT inserted.* FROM inserted LEFT JOIN wake ON true;

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

-- name: wake_workers_at
-- Release runs created ahead of their instant: NOTIFY the workers once the database clock has
-- reached $1 (their claim compares available_at with now(), so an early NOTIFY would find
-- nothing). Returns the clock, and whether it notified.
WITH clock AS (SELECT clock_timestamp() AS now),
notified AS (SELECT pg_notify(:RUNS_CHANNEL, '') FROM clock WHERE clock.now >= $1)
SELECT clock.now, (SELECT count(*) FROM notified) > 0 AS notified FROM clock;

-- name: cancel_runs
-- overlap_policy=cancel_previous and cancel_task: queued runs are cancelled at once; running
-- ones are asked to stop between steps (their worker hears pao_cancel, or sees the flag at its
-- next heartbeat). Reasons are per run.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) AS i(id, reason)
), queued AS (
    UPDATE runs r
    SET status = 'cancelled', finished_at = now(), reason = input.reason, lease_owner = NULL, updated_at = now()
    FROM input
    WHERE r.id = input.id AND r.status = 'queued'
    RETURNING r.id, 'cancelled'::text AS outcome
), running AS (
    UPDATE runs r
    SET cancel_requested = true, reason = input.reason, updated_at = now()
    FROM input
    WHERE r.id = input.id AND r.status = 'running' AND NOT r.cancel_requested
    RETURNING r.id, 'stopping'::text AS outcome
), wake AS (
    SELECT pg_notify(:CANCEL_CHANNEL, running.id::text) FROM running
)
SELECT id, outcome FROM queued
UNION ALL
SELECT id, outcome FROM running WHERE (SELECT count(*) FROM wake) >= 0;

-- name: active_runs_of_task
SELECT id, status FROM runs WHERE task_id = $1 AND status IN ('queued', 'running') ORDER BY created_at;

-- name: withdraw_reservations
-- Runs the scheduler created ahead of their instant (queued, scheduled in the future) are
-- reservations, not fires yet: pausing, snoozing, re-scheduling or cancelling a task withdraws
-- them. They are deleted, so the instant is free for whatever the new schedule says; one that a
-- deduplicated run points at (deduped_of) cannot be deleted and is cancelled with reason $2.
WITH reserved AS (
    SELECT r.id, r.scheduled_for,
           EXISTS (SELECT 1 FROM runs d WHERE d.task_id = r.task_id AND d.deduped_of = r.id) AS referenced
    FROM runs r
    WHERE r.task_id = $1 AND r.trigger = 'schedule' AND r.status = 'queued' AND r.scheduled_for > now()
    FOR UPDATE OF r
), deleted AS (
    DELETE FROM runs WHERE id IN (SELECT id FROM reserved WHERE NOT referenced)
    RETURNING scheduled_for
), cancelled AS (
    UPDATE runs SET status = 'cancelled', finished_at = now(), reason = $2, updated_at = now()
    WHERE id IN (SELECT id FROM reserved WHERE referenced)
    RETURNING scheduled_for
)
SELECT scheduled_for FROM deleted
UNION ALL
SELECT scheduled_for FROM cancelled;

-- name: set_task_state
-- pause, resume, snooze, cancel: the scheduling state of one task, which the caller has locked.
UPDATE tasks
SET status = $2, next_fire_at = $3, snoozed_until = $4, updated_at = now()
WHERE id = $1
RETURNING *;

-- name: update_task_fields
-- update_task writes the whole validated definition back (the engine merged the changes into the
-- stored task and validated the result exactly as create_task does).
UPDATE tasks
SET title = $2, description = $3, schedule_kind = $4, schedule_expr = $5, timezone = $6, payload = $7,
    priority = $8, dedupe_key = $9, dedupe_window_seconds = $10, max_retries = $11,
    backoff_strategy = $12, backoff_base_seconds = $13, backoff_max_seconds = $14,
    concurrency_key = $15, misfire_policy = $16, misfire_grace_seconds = $17, overlap_policy = $18,
    status = $19, next_fire_at = $20, schedule_anchor = $21, snoozed_until = $22, updated_at = now()
WHERE id = $1
RETURNING *;
