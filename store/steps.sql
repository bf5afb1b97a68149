-- Statements on `run_steps` (store/steps.py): each step of each attempt, as it runs and ends.
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: get_run_steps
SELECT * FROM run_steps WHERE run_id = $1 ORDER BY attempt, step_index;

-- name: previous_step_outputs
-- Outputs of steps that succeeded in any earlier attempt: a retry resumes after them. The sealed
-- copy, when there is one, is what the resume gives later steps (secrets put back).
SELECT DISTINCT ON (step_index) step_index, step_id, output, output_sealed
FROM run_steps
WHERE run_id = $1 AND status = 'succeeded'
ORDER BY step_index, attempt DESC;

-- Every write below is fenced on the run's lease: it happens only while worker $w holds the run.
-- The check locks the run row FOR KEY SHARE, so the lease sweep (which takes the row FOR UPDATE
-- SKIP LOCKED) cannot re-queue the run between the check and the write: it passes over the run
-- until the write is committed, and a write that waits for the sweep re-reads the row and finds
-- the lease gone.

-- name: start_step
WITH held AS (
    SELECT id FROM runs WHERE id = $1 AND lease_owner = $7 AND status = 'running' FOR KEY SHARE
)
INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input)
SELECT held.id, $2, $3, $4, $5, 'running', $6 FROM held
ON CONFLICT (run_id, attempt, step_index) DO UPDATE
SET status = 'running', input = EXCLUDED.input, output = NULL, output_sealed = NULL, error = NULL,
    started_at = now(), finished_at = NULL, duration_ms = NULL
RETURNING id;

-- name: finish_step
-- The end of a step start_step recorded as running ($1), by worker $3 of run $2.
WITH held AS (
    SELECT id FROM runs WHERE id = $2 AND lease_owner = $3 AND status = 'running' FOR KEY SHARE
)
UPDATE run_steps s
SET status = $4, output = $5, error = $6, finished_at = now(), duration_ms = $7, output_sealed = $8
FROM held
WHERE s.id = $1 AND s.run_id = held.id
RETURNING s.id;

-- name: record_step
-- A step recorded in one write once it is over (built-in steps that finish in microseconds).
WITH held AS (
    SELECT id FROM runs WHERE id = $1 AND lease_owner = $12 AND status = 'running' FOR KEY SHARE
)
INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input, output, error,
                       started_at, finished_at, duration_ms, output_sealed)
SELECT held.id, $2, $3, $4, $5, $6, $7, $8, $9, $10, now(), $11, $13 FROM held
ON CONFLICT (run_id, attempt, step_index) DO UPDATE
SET status = EXCLUDED.status, input = EXCLUDED.input, output = EXCLUDED.output, error = EXCLUDED.error,
    started_at = EXCLUDED.started_at, finished_at = EXCLUDED.finished_at, duration_ms = EXCLUDED.duration_ms,
    output_sealed = EXCLUDED.output_sealed
RETURNING id;

-- name: abandon_steps
-- The steps that were running when an attempt died are closed, saying why. It runs after the
-- runs were re-queued or released, in the same transaction: a write the dead worker committed just
-- before is visible to this statement, and any later one is fenced off by the lease.
UPDATE run_steps s
SET status = 'abandoned', error = i.reason, finished_at = now(),
    duration_ms = extract(epoch FROM now() - s.started_at) * 1000
FROM unnest($1::uuid[], $2::int[], $3::text[]) AS i(run_id, attempt, reason)
WHERE s.run_id = i.run_id AND s.attempt = i.attempt AND s.status = 'running';
