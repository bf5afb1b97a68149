-- Statements on `audit_log` (store/audit.py).
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: insert_audit
INSERT INTO audit_log (agent_id, action, target_type, target_id, details) VALUES ($1, $2, $3, $4, $5);
