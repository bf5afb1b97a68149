-- Named statements. Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: get_owner_agent
SELECT * FROM agents WHERE is_owner AND revoked_at IS NULL;

-- name: insert_owner_agent
-- Two processes starting at once both try; the partial unique index lets one win.
INSERT INTO agents (name, scopes, is_owner) VALUES ('owner', '{admin}', true)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: get_agent_by_token_hash
SELECT * FROM agents WHERE token_hash = $1 AND revoked_at IS NULL;

-- name: insert_task
INSERT INTO tasks (
    title, description, schedule_kind, schedule_expr, timezone, payload, priority,
    dedupe_key, dedupe_window_seconds, max_retries, backoff_strategy, backoff_base_seconds,
    backoff_max_seconds, concurrency_key, misfire_policy, misfire_grace_seconds, overlap_policy,
    status, next_fire_at, created_by, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $21)
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
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: insert_run
-- One statement enqueues and wakes the workers; the NOTIFY is delivered on commit.
WITH inserted AS (
    INSERT INTO runs (task_id, status, trigger, trigger_data, scheduled_for, priority, concurrency_key,
                      dedupe_key, deduped_of, max_attempts, available_at, reason, created_by, finished_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13,
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

-- name: get_run
SELECT * FROM runs WHERE id = $1;

-- name: get_run_steps
SELECT * FROM run_steps WHERE run_id = $1 ORDER BY attempt, step_index;

-- name: list_runs
SELECT * FROM runs
WHERE ($1::uuid IS NULL OR task_id = $1)
  AND ($2::text IS NULL OR status = $2)
  AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $5;

-- name: claim_runs
-- Claim up to $2 runs for worker $1 in one statement.
WITH candidates AS (
    -- Due queued runs, most urgent first, then oldest due first. A run whose concurrency key is
    -- held by a running run is not a candidate. SKIP LOCKED lets concurrent workers pass over
    -- rows another claim is taking instead of queueing behind it.
    SELECT r.id, r.concurrency_key, r.priority, r.available_at
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
    SELECT id FROM (
        SELECT id, row_number() OVER (PARTITION BY coalesce(concurrency_key, id::text)
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
RETURNING r.*, t.payload AS task_payload, t.updated_at AS task_updated_at, t.title AS task_title, t.backoff_strategy,
          t.backoff_base_seconds, t.backoff_max_seconds;

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

-- name: requeue_expired_leases
-- Runs whose worker stopped heartbeating go back to the queue as a new attempt;
-- past max_attempts they fail instead of looping on a run that kills its worker.
-- SKIP LOCKED: a locked run is being written by its (live) worker, so its lease is not lost.
WITH expired AS (
    SELECT id FROM runs
    WHERE status = 'running' AND lease_expires_at < now()
    ORDER BY id
    FOR UPDATE SKIP LOCKED
)
UPDATE runs r
SET status = CASE WHEN r.attempt >= r.max_attempts THEN 'failed' ELSE 'queued' END,
    attempt = CASE WHEN r.attempt >= r.max_attempts THEN r.attempt ELSE r.attempt + 1 END,
    error = CASE WHEN r.attempt >= r.max_attempts
                 THEN 'worker ' || coalesce(r.lease_owner, '?') || ' stopped while running this run, and no attempts are left'
                 ELSE r.error END,
    reason = 'lease of worker ' || coalesce(r.lease_owner, '?') || ' expired; re-queued',
    finished_at = CASE WHEN r.attempt >= r.max_attempts THEN now() END,
    available_at = now(),
    lease_owner = NULL,
    lease_expires_at = NULL,
    updated_at = now()
FROM expired
WHERE r.id = expired.id
RETURNING r.id, r.status;

-- name: release_runs
-- Graceful shutdown: give runs back without burning an attempt. Rows are locked in id order,
-- like every multi-row write to runs, so concurrent batches cannot deadlock.
WITH held AS (
    SELECT id FROM runs
    WHERE id = ANY($2::uuid[]) AND lease_owner = $1 AND status = 'running'
    ORDER BY id
    FOR UPDATE
)
UPDATE runs r
SET status = 'queued', lease_owner = NULL, lease_expires_at = NULL, available_at = now(),
    reason = 'released by worker ' || $1 || ' on shutdown', updated_at = now()
FROM held
WHERE r.id = held.id
RETURNING r.id;

-- name: finish_runs
-- Record the end of many runs of worker $2 in one statement (one commit for a whole batch), each
-- with the record of its last step when it has one. Fenced on the lease: a run this worker no
-- longer holds is not completed (a second time), and its step record is not written either.
WITH input AS (
    SELECT *
    FROM unnest($1::uuid[], $3::text[], $4::text[], $5::jsonb[], $6::text[],
                $7::int[], $8::int[], $9::text[], $10::text[], $11::text[], $12::jsonb[], $13::jsonb[],
                $14::text[], $15::timestamptz[], $16::float8[])
         AS i(run_id, status, error, outputs, reason,
              attempt, step_index, step_id, uses, step_status, input, output, step_error, started_at, duration_ms)
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
    RETURNING h.*
), steps AS (
    INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input, output, error,
                           started_at, finished_at, duration_ms)
    SELECT run_id, attempt, step_index, step_id, uses, step_status, input, output, step_error,
           started_at, now(), duration_ms
    FROM finished
    WHERE step_index IS NOT NULL
    ON CONFLICT (run_id, attempt, step_index) DO UPDATE
    SET status = EXCLUDED.status, input = EXCLUDED.input, output = EXCLUDED.output, error = EXCLUDED.error,
        started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms
)
SELECT run_id AS id FROM finished;

-- name: retry_run
-- Back to the queue as the next attempt, claimable after the backoff.
UPDATE runs
SET status = 'queued', attempt = attempt + 1, error = $3, reason = $4,
    available_at = now() + make_interval(secs => $5::float8),
    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
WHERE id = $1 AND lease_owner = $2 AND status = 'running'
RETURNING id;

-- name: previous_step_outputs
-- Outputs of steps that succeeded in any earlier attempt: a retry resumes after them.
SELECT DISTINCT ON (step_index) step_index, step_id, output
FROM run_steps
WHERE run_id = $1 AND status = 'succeeded'
ORDER BY step_index, attempt DESC;

-- name: start_step
INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input)
SELECT $1, $2, $3, $4, $5, 'running', $6
WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND lease_owner = $7 AND status = 'running')
ON CONFLICT (run_id, attempt, step_index) DO UPDATE
SET status = 'running', input = EXCLUDED.input, output = NULL, error = NULL,
    started_at = now(), finished_at = NULL, duration_ms = NULL
RETURNING id;

-- name: finish_step
UPDATE run_steps
SET status = $2, output = $3, error = $4, finished_at = now(), duration_ms = $5
WHERE id = $1;

-- name: record_step
-- A step recorded in one write once it is over (built-in steps that finish in microseconds).
INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input, output, error,
                       started_at, finished_at, duration_ms)
SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), $11
WHERE EXISTS (SELECT 1 FROM runs WHERE id = $1 AND lease_owner = $12 AND status = 'running')
ON CONFLICT (run_id, attempt, step_index) DO UPDATE
SET status = EXCLUDED.status, input = EXCLUDED.input, output = EXCLUDED.output, error = EXCLUDED.error,
    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms
RETURNING id;

-- name: insert_audit
INSERT INTO audit_log (agent_id, action, target_type, target_id, details) VALUES ($1, $2, $3, $4, $5);

-- name: database_health
SELECT now() AS now,
       (SELECT count(*) FROM runs WHERE status = 'queued' AND available_at <= now()) AS queued_due,
       (SELECT count(*) FROM runs WHERE status = 'running') AS running,
       (SELECT max(version) FROM schema_migrations) AS schema_version;

-- name: cancel_queued_run
UPDATE runs
SET status = 'cancelled', finished_at = now(), reason = $2, lease_owner = NULL, updated_at = now()
WHERE id = $1 AND status = 'queued'
RETURNING *;

-- name: request_run_cancel
-- A running run stops between steps: its worker learns of it through NOTIFY (and the heartbeat).
WITH flagged AS (
    UPDATE runs SET cancel_requested = true, reason = $2, updated_at = now()
    WHERE id = $1 AND status = 'running'
    RETURNING *
), wake AS (
    SELECT pg_notify(:CANCEL_CHANNEL, flagged.id::text) FROM flagged
)
SELECT flagged.* FROM flagged LEFT JOIN wake ON true;
