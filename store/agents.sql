-- Statements on `agents` (store/agents.py).
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: get_owner_agent
SELECT * FROM agents WHERE is_owner AND revoked_at IS NULL;

-- name: insert_owner_agent
-- Two processes starting at once both try; the partial unique index lets one win.
INSERT INTO agents (name, scopes, is_owner) VALUES ('owner', '{admin}', true)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: get_agent_by_token_hash
SELECT * FROM agents WHERE token_hash = $1 AND revoked_at IS NULL;
