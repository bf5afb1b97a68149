-- Statements on `runs` (store/runs.py): enqueueing, claiming, leases, completion, cancelling.
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: insert_run
-- One statement enqueues and wakes the workers; the NOTIFY is delivered on commit.
WITH inserted AS (
    INSERT INTO runs (task_id, status, trigger, trigger_data, scheduled_for, priority, concurrency_key,
                      dedupe_key, deduped_of, max_attempts, available_at, reason, created_by, event_id, finished_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14,
            CASE WHEN $2 IN ('skipped', 'cancelled') THEN now() END)
    RETURNING *
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '') FROM inserted WHERE inserted.status = 'queued'
)
SELECT inserted.* FROM inserted LEFT JOIN wake ON true;

-- name: find_duplicate_run
-- The newest run of this task carrying the same dedupe key that is still inside the window
-- (window 0: any run of that key that has not finished yet).
SELECT id FROM runs
WHERE task_id = $1 AND dedupe_key = $2 AND status <> 'skipped'
  AND (CASE WHEN $3::int = 0 THEN status IN ('queued', 'running')
            ELSE created_at > now() - make_interval(secs => $3::int) END)
ORDER BY created_at DESC
LIMIT 1;

-- name: insert_schedule_runs
-- Every fire decided in a pass, in one statement: runs to execute ('queued'), the fires that
-- were skipped, coalesced or suppressed ('skipped', with the reason), and fires that could not
-- become a run ('failed', e.g. a key that did not render, with the error), so list_runs tells why.
-- ON CONFLICT on runs_one_per_fire: a (task, instant) that already has a row keeps it; a second
-- scheduler can never double a fire, whatever it computed.
-- A queued run becomes claimable at its scheduled instant (available_at); runs already due wake
-- the workers now (the NOTIFY is delivered on commit), runs created ahead of their instant are
-- released by the scheduler's own NOTIFY at that instant.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::timestamptz[], $4::int[], $5::int[], $6::text[],
                         $7::text[], $8::bool[], $9::text[])
        AS i(task_id, status, scheduled_for, priority, max_attempts, reason, concurrency_key, catch_up, error)
), inserted AS (
    INSERT INTO runs (task_id, status, trigger, trigger_data, scheduled_for, priority, concurrency_key,
                      max_attempts, available_at, reason, error, finished_at)
    SELECT task_id, status, 'schedule',
           CASE WHEN catch_up THEN '{"catch_up": true}'::jsonb ELSE '{}'::jsonb END,
           scheduled_for, priority, concurrency_key, max_attempts, scheduled_for, reason, error,
           CASE WHEN status <> 'queued' THEN now() END
    FROM input
    ON CONFLICT (task_id, scheduled_for) WHERE trigger = 'schedule' DO NOTHING
    RETURNING id, task_id, status, scheduled_for
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '')
    WHERE EXISTS (SELECT 1 FROM inserted WHERE status = 'queued' AND scheduled_for <= now())
)
SELECT inserted.* FROM inserted LEFT JOIN wake ON true;

-- name: wake_workers_at
-- Release runs created ahead of their instant: NOTIFY the workers once the database clock has
-- reached $1 (their claim compares available_at with now(), so an early NOTIFY would find
-- nothing). Returns the clock, and whether it notified.
WITH clock AS (SELECT clock_timestamp() AS now),
notified AS (SELECT pg_notify(:RUNS_CHANNEL, '') FROM clock WHERE clock.now >= $1)
SELECT clock.now, (SELECT count(*) FROM notified) > 0 AS notified FROM clock;

-- name: get_run
SELECT * FROM runs WHERE id = $1;

-- name: list_runs
SELECT * FROM runs
WHERE ($1::uuid IS NULL OR task_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
  -- An agent without admin lists only the runs of its own tasks.
  AND ($6::uuid IS NULL OR task_id IN (SELECT id FROM tasks WHERE created_by = $6))
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: run_owner
-- Who may see a run: the agent that created its task (runs belong to their task's agent).
SELECT t.created_by FROM runs r JOIN tasks t ON t.id = r.task_id WHERE r.id = $1;

-- name: active_runs_of_task
SELECT id, status FROM runs WHERE task_id = $1 AND status IN ('queued', 'running') ORDER BY created_at;

-- name: claim_runs
-- Claim up to $2 runs for worker $1 in one statement.
WITH candidates AS (
    -- Due queued runs, most urgent first, then oldest due first. A run whose concurrency key is
    -- held by a running run is not a candidate. SKIP LOCKED lets concurrent workers pass over
    -- rows another claim is taking instead of queueing behind it.
    SELECT r.id, r.concurrency_key, r.priority, r.available_at, r.attempt, r.started_at
    FROM runs r
    WHERE r.status = 'queued'
      AND r.available_at <= now()
      AND (r.concurrency_key IS NULL OR NOT EXISTS (
              SELECT 1 FROM runs h WHERE h.concurrency_key = r.concurrency_key AND h.status = 'running'))
    -- Exactly the order of the runs_claimable index, so the scan stops after $2 rows instead of
    -- sorting the whole backlog.
    ORDER BY r.priority, r.available_at
    LIMIT $2
    FOR UPDATE OF r SKIP LOCKED
), picked AS (
    -- At most one run per concurrency key per claim; the partial unique index
    -- runs_concurrency_exclusive rejects the rare cross-worker race, and the caller retries.
    -- resume: a run that ran before (a retry, or one taken over or released) may have finished
    -- steps to reuse; read before this UPDATE sets started_at.
    SELECT id, attempt > 1 OR started_at IS NOT NULL AS resume FROM (
        SELECT id, attempt, started_at,
               row_number() OVER (PARTITION BY coalesce(concurrency_key, id::text)
                                  ORDER BY priority, available_at, id) AS n
        FROM candidates
    ) ranked
    WHERE n = 1
)
UPDATE runs r
SET status = 'running',
    started_at = coalesce(r.started_at, now()),
    lease_owner = $1,
    lease_expires_at = now() + make_interval(secs => $3::float8),
    updated_at = now()
FROM picked, tasks t
WHERE r.id = picked.id AND t.id = r.task_id
-- The task's pipeline and retry policy come back with the run: no second round trip per run.
RETURNING r.id, r.task_id, r.attempt, r.max_attempts, r.trigger, r.trigger_data, r.scheduled_for,
          r.cancel_requested, picked.resume, r.failing, t.payload AS task_payload, t.updated_at AS task_updated_at,
          t.title AS task_title, t.backoff_strategy, t.backoff_base_seconds, t.backoff_max_seconds;

-- name: next_queued_due_in
-- An idle worker sleeps until the next run created ahead of its instant becomes claimable, so it
-- starts on time by itself (the scheduler's NOTIFY at the instant is a second, later, signal).
SELECT extract(epoch FROM min(available_at) - now()) FROM runs WHERE status = 'queued';

-- name: renew_leases
-- Heartbeat for all runs a worker holds; returns which of them an agent asked to cancel.
-- SKIP LOCKED: a run whose row is locked is being finished right now and needs no renewal;
-- waiting for it could deadlock against a batch completion that locks rows in another order.
WITH held AS (
    -- lease_owner alone fences (it is set exactly while a run is running); see finish_runs.
    SELECT id FROM runs
    WHERE id = ANY($2::uuid[]) AND lease_owner = $1
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
UPDATE runs r
SET lease_expires_at = now() + make_interval(secs => $3::float8)
FROM held
WHERE r.id = held.id
RETURNING r.id, r.cancel_requested;

-- name: renew_lease
-- Before a step, when the worker cannot tell from its own clock that its lease still runs: does it
-- hold the run? If so the lease is renewed. Unlike the heartbeat it waits for a row lock (a
-- heartbeat renewing the same run) instead of skipping, so a busy row is not taken for a lost one.
UPDATE runs SET lease_expires_at = now() + make_interval(secs => $3::float8)
WHERE id = $1 AND lease_owner = $2 AND status = 'running'
RETURNING cancel_requested;

-- name: requeue_expired_leases
-- Runs whose worker stopped heartbeating go back to the queue as a new attempt;
-- past max_attempts they fail instead of looping on a run that kills its worker, except that a
-- task with on_failure steps gets them run first: the run is queued once more with `failing` set
-- (what ended it), and fails after them; if that attempt dies too, it fails without them.
-- SKIP LOCKED: a locked run is being written by its (live) worker, so its lease is not lost.
-- Returns the dead attempt and its worker, whose running steps the caller then closes; re-queued
-- runs wake the workers (delivered on commit).
WITH expired AS (
    SELECT r.id, r.attempt, r.lease_owner, r.attempt >= r.max_attempts AS spent,
           r.failing IS NULL AND jsonb_typeof(t.payload -> 'on_failure') = 'array'
               AND jsonb_array_length(t.payload -> 'on_failure') > 0 AS owes_on_failure,
           'worker ' || coalesce(r.lease_owner, '?') || ' stopped while running this run' AS died,
           'lease of worker ' || coalesce(r.lease_owner, '?') || ' expired' AS lapsed
    FROM runs r JOIN tasks t ON t.id = r.task_id
    WHERE r.status = 'running' AND r.lease_expires_at < now()
    ORDER BY r.id
    FOR UPDATE OF r SKIP LOCKED
), requeued AS (
UPDATE runs r
SET status = CASE WHEN e.spent AND NOT e.owes_on_failure THEN 'failed' ELSE 'queued' END,
    attempt = CASE WHEN e.spent THEN r.attempt ELSE r.attempt + 1 END,
    failing = CASE WHEN e.spent AND e.owes_on_failure THEN e.died || ', and no attempts are left' ELSE r.failing END,
    error = CASE WHEN NOT e.spent THEN r.error
                 WHEN r.failing IS NOT NULL THEN r.failing || '; ' || e.died || ' while its on_failure steps ran'
                 ELSE e.died || ', and no attempts are left' END,
    reason = CASE WHEN NOT e.spent THEN e.lapsed || '; re-queued'
                  WHEN e.owes_on_failure
                      THEN e.lapsed || ' with no attempts left; queued to run its on_failure steps, then it fails'
                  WHEN r.failing IS NOT NULL THEN 'failed: its on_failure steps did not finish'
                  ELSE e.lapsed || '; no attempts left' END,
    finished_at = CASE WHEN e.spent AND NOT e.owes_on_failure THEN now() END,
    available_at = now(),
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM expired e
WHERE r.id = e.id
RETURNING r.id, r.task_id, r.status, r.attempt, e.attempt AS dead_attempt, e.lease_owner AS dead_worker,
          r.failing IS NOT NULL AND r.status = 'queued' AS owes_on_failure
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '') WHERE EXISTS (SELECT 1 FROM requeued WHERE status = 'queued')
)
SELECT requeued.* FROM requeued LEFT JOIN wake ON true;

-- name: release_runs
-- Graceful shutdown: give runs back without burning an attempt. Rows are locked in id order,
-- like every multi-row write to runs, so concurrent batches cannot deadlock. The released runs
-- wake the workers (another process can take them at once).
WITH held AS (
    SELECT id FROM runs
    WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND status = 'running'
    ORDER BY id
    FOR UPDATE
), released AS (
    UPDATE runs r
    SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, available_at = now(),
        reason = 'released by worker ' || $1 || ' on shutdown', updated_at = now()
    FROM held
    WHERE r.id = held.id
    RETURNING r.id, r.attempt
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '') WHERE EXISTS (SELECT 1 FROM released)
)
SELECT released.* FROM released LEFT JOIN wake ON true;

-- name: finish_runs
-- Record the end of many runs of worker $2 in one statement (one commit for a whole batch), each
-- with the record of its last step when it has one. Fenced on the lease: a run this worker no
-- longer holds is not completed (a second time), and its step record is not written either.
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                $7::int[], $8::int[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::jsonb[],
                $14::text[], $15::timestamptz[], $16::float8[], $17::jsonb[])
         AS i(run_id, status, error, outputs, reason,
              attempt, step_index, step_id, uses, step_status, input, output, step_error, started_at, duration_ms,
              output_sealed)
), held AS (
    -- One primary-key lookup per input row (LATERAL keeps the planner from scanning the batch once
    -- per running run when its statistics say few runs are running), locking rows in id order as
    -- every multi-row write to runs does, so two batches or a batch and a heartbeat cannot deadlock.
    SELECT i.*
    FROM (SELECT * FROM input ORDER BY run_id) i
    CROSS JOIN LATERAL (
        -- lease_owner is set exactly while a run is running, so it alone fences the write; adding
        -- status = 'running' would tempt the planner into scanning runs_leased once per row.
        SELECT r.id FROM runs r
        WHERE r.id = i.run_id AND r.lease_owner = $2
        FOR UPDATE
    ) locked
), finished AS (
    UPDATE runs r
    SET status = h.status, error = h.error, outputs = h.outputs, reason = coalesce(h.reason, r.reason),
        finished_at = now(), lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    FROM held h
    WHERE r.id = h.run_id
    RETURNING h.*, r.concurrency_key AS released_key
), steps AS (
    INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input, output, error,
                           started_at, finished_at, duration_ms, output_sealed)
    SELECT run_id, attempt, step_index, step_id, uses, step_status, input, output, step_error,
           started_at, now(), duration_ms, output_sealed
    FROM finished
    WHERE step_index IS NOT NULL
    ON CONFLICT (run_id, attempt, step_index) DO UPDATE
    SET status = EXCLUDED.status, input = EXCLUDED.input, output = EXCLUDED.output, error = EXCLUDED.error,
        started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms,
        output_sealed = EXCLUDED.output_sealed
), wake AS (
    -- A run that held a concurrency key released it: if a run waits for that key (runs_waiting_key),
    -- wake the workers now instead of at their next poll.
    SELECT pg_notify(:RUNS_CHANNEL, '')
    WHERE EXISTS (
        SELECT 1 FROM finished f JOIN runs q ON q.concurrency_key = f.released_key
        WHERE q.status = 'queued' AND q.available_at <= now()
    )
)
SELECT run_id AS id FROM finished LEFT JOIN wake ON true;

-- name: retry_run
-- Back to the queue as the next attempt, claimable after the backoff. Its concurrency key is free
-- meanwhile: a run waiting for it is woken at once.
WITH retried AS (
    UPDATE runs
    SET status = 'queued', attempt = attempt + 1, error = $3, reason = $4,
        available_at = now() + make_interval(secs => $5::float8),
        lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
    WHERE id = $1 AND lease_owner = $2 AND status = 'running'
    RETURNING id, concurrency_key
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '')
    WHERE EXISTS (
        SELECT 1 FROM retried f JOIN runs q ON q.concurrency_key = f.concurrency_key
        WHERE q.id <> f.id AND q.status = 'queued' AND q.available_at <= now()
    )
)
SELECT retried.id FROM retried LEFT JOIN wake ON true;

-- name: cancel_queued_run
UPDATE runs
SET status = 'cancelled', finished_at = now(), reason = $2, lease_owner = NULL, updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING *;

-- name: request_run_cancel
-- A running run stops, its step in flight included: its worker learns of it through NOTIFY (and the
-- heartbeat).
WITH flagged AS (
    UPDATE runs SET cancel_requested = true, reason = $2, updated_at = now()
    WHERE id = $1 AND status = 'running'
    RETURNING *
), wake AS (
    SELECT pg_notify(:CANCEL_CHANNEL, flagged.id::text) FROM flagged
)
SELECT flagged.* FROM flagged LEFT JOIN wake ON true;

-- name: cancel_runs
-- overlap_policy=cancel_previous and cancel_task: queued runs are cancelled at once; running
-- ones are asked to stop (their worker hears pao_cancel and stops the step in flight, or sees the
-- flag at its next heartbeat). Reasons are per run.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[]) AS i(id, reason)
), queued AS (
    UPDATE runs r
    SET status = 'cancelled', finished_at = now(), reason = input.reason, lease_owner = NULL, updated_at = now()
    FROM input
    WHERE r.id = input.id AND r.status = 'queued'
    RETURNING r.id, r.status
), running AS (
    UPDATE runs r
    SET cancel_requested = true, reason = input.reason, updated_at = now()
    FROM input
    WHERE r.id = input.id AND r.status = 'running' AND NOT r.cancel_requested
    RETURNING r.id, r.status
), wake AS (
    SELECT pg_notify(:CANCEL_CHANNEL, running.id::text) FROM running
)
SELECT id, status FROM queued
UNION ALL
SELECT id, status FROM running WHERE (SELECT count(*) FROM wake) >= 0;

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

-- name: queue_stats
-- What `health` reports of the queue: runs due and waiting for a worker, and runs executing.
SELECT (SELECT count(*) FROM runs WHERE status = 'queued' AND available_at <= now()) AS queued_due,
       (SELECT count(*) FROM runs WHERE status = 'running') AS running;

-- name: queue_metrics
-- What /metrics reports of the queue, as every replica sees it: runs due and waiting for a worker,
-- runs executing, and how long the oldest due run has waited (0 when none waits).
SELECT count(*) FILTER (WHERE status = 'queued' AND available_at <= now()) AS queued_due,
       count(*) FILTER (WHERE status = 'running') AS running,
       coalesce(extract(epoch FROM now() - min(available_at) FILTER (
           WHERE status = 'queued' AND available_at <= now())), 0)::float8 AS oldest_due_age
FROM runs
WHERE status IN ('queued', 'running');

-- name: lock_dedupe_key
-- Serialises enqueues of one (task, dedupe key) until the transaction ends.
SELECT pg_advisory_xact_lock(hashtextextended($1, 0));
