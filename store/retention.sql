-- Retention (store/retention.py): old history is deleted in small batches, oldest first, by one
-- replica at a time. Each batch is its own short transaction: the rows it deletes are locked only
-- while it runs, and rows another transaction holds are passed over (SKIP LOCKED), never waited for.

-- name: retention_try_lock
-- Session-level: held across the batches of one pruning pass, released by retention_unlock (and by
-- asyncpg's reset when the connection goes back to the pool).
SELECT pg_try_advisory_lock(1346457679, 1);

-- name: retention_unlock
SELECT pg_advisory_unlock(1346457679, 1);

-- name: prune_runs
-- Finished runs older than $1, at most $2; their steps go with them (ON DELETE CASCADE), and a
-- skipped duplicate pointing at one keeps its row with deduped_of cleared (ON DELETE SET NULL).
-- Reads runs_finished.
WITH doomed AS (
    SELECT id FROM runs
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'skipped') AND finished_at < $1
    ORDER BY finished_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
)
DELETE FROM runs r USING doomed WHERE r.id = doomed.id;

-- name: prune_events
WITH doomed AS (
    SELECT id FROM events WHERE created_at < $1 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
DELETE FROM events e USING doomed WHERE e.id = doomed.id;

-- name: prune_audit
WITH doomed AS (
    SELECT id FROM audit_log WHERE created_at < $1 ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
)
DELETE FROM audit_log a USING doomed WHERE a.id = doomed.id;
