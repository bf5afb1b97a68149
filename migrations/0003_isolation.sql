-- Isolation: a dead attempt's steps are closed, a retry can give steps the secrets an earlier step's
-- output held without storing them, and a released concurrency key finds its waiting runs at once.

-- A step that was running when its attempt died (its worker was killed, or lost its lease) is
-- closed as 'abandoned', with the reason in `error`, when the run is re-queued or released.
ALTER TABLE run_steps DROP CONSTRAINT run_steps_status_check;
ALTER TABLE run_steps ADD CONSTRAINT run_steps_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'cancelled', 'abandoned'));

-- `output` is what readers see: every secret the run used is replaced by ***. A run that resumes
-- (a retry, a takeover) gives later steps the outputs of the steps that already succeeded, and
-- those must be the real values. `output_sealed` is the output with each secret replaced by a
-- marker that names it (never its value); NULL when the output held no secret. A resume puts
-- the secrets back from the environment of the worker that resumes.
ALTER TABLE run_steps ADD COLUMN output_sealed jsonb;

-- When a run holding a concurrency key ends, its worker NOTIFYs the workers if a run waits for
-- that key; this index answers "does one wait?" without scanning the queue.
CREATE INDEX runs_waiting_key ON runs (concurrency_key) WHERE status = 'queued' AND concurrency_key IS NOT NULL;
