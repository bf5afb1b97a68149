-- Statements on `audit_log` (store/audit.py).
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: insert_audit
INSERT INTO audit_log (agent_id, agent_name, action, target_type, target_id, details, request_id, outcome)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8);

-- name: list_audit
-- Newest first; every filter optional. Pages continue strictly before the cursor's (created_at, id).
SELECT * FROM audit_log
WHERE ($1::uuid IS NULL OR agent_id = $1)
  AND ($2::text IS NULL OR action = $2)
  AND ($3::text IS NULL OR target_type = $3)
  AND ($4::text IS NULL OR target_id = $4)
  AND ($5::timestamptz IS NULL OR created_at >= $5)
  AND ($6::timestamptz IS NULL OR created_at < $6)
  AND ($7::bigint IS NULL OR id < $7)
ORDER BY id DESC
LIMIT $8;
