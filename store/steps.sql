-- Statements on `run_steps` (store/steps.py): each step of each attempt, as it runs and ends.
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: get_run_steps
SELECT * FROM run_steps WHERE run_id = $1 ORDER BY attempt, step_index;

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
