-- Statements on `agents` and `agent_tokens` (store/agents.py).
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: get_owner_agent
SELECT * FROM agents WHERE is_owner AND revoked_at IS NULL AND deleted_at IS NULL;

-- name: insert_owner_agent
-- Two processes starting at once both try; the partial unique index lets one win.
INSERT INTO agents (name, scopes, is_owner) VALUES ('owner', '{admin}', true)
ON CONFLICT DO NOTHING
RETURNING *;

-- name: insert_agent
INSERT INTO agents (name, scopes, description) VALUES ($1, $2, $3) RETURNING *;

-- name: get_agent
-- Deleted agents are found too (with deleted_at set): their history stays readable.
SELECT * FROM agents WHERE id = $1;

-- name: list_agents
SELECT * FROM agents
WHERE ($1::boolean OR deleted_at IS NULL)
  AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3::uuid))
ORDER BY created_at DESC, id DESC
LIMIT $4;

-- name: update_agent
UPDATE agents
SET name = coalesce($2, name), scopes = coalesce($3, scopes), description = coalesce($4, description),
    updated_at = now()
WHERE id = $1 AND deleted_at IS NULL
RETURNING *;

-- name: delete_agent
-- The row stays (tasks, runs and audit entries refer to it); its tokens stop working with it.
WITH gone AS (
    UPDATE agents SET deleted_at = now(), revoked_at = coalesce(revoked_at, now()), updated_at = now()
    WHERE id = $1 AND deleted_at IS NULL AND NOT is_owner
    RETURNING *
), tokens AS (
    UPDATE agent_tokens SET revoked_at = now() WHERE agent_id IN (SELECT id FROM gone) AND revoked_at IS NULL
)
SELECT * FROM gone;

-- name: insert_token
INSERT INTO agent_tokens (id, agent_id, secret_hash, expires_at) VALUES ($1, $2, $3, $4) RETURNING *;

-- name: tokens_of_agent
SELECT * FROM agent_tokens WHERE agent_id = $1 ORDER BY created_at, id;

-- name: revoke_token
UPDATE agent_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING *;

-- name: revoke_tokens_of_agent
UPDATE agent_tokens SET revoked_at = now() WHERE agent_id = $1 AND revoked_at IS NULL RETURNING *;

-- name: get_token
SELECT * FROM agent_tokens WHERE id = $1;

-- name: authenticate
-- One indexed lookup by the token's id; the caller compares the secret's hash in constant time.
-- A revoked or expired token, or one of a revoked or deleted agent, finds nothing usable.
SELECT t.secret_hash, t.expires_at, a.*
FROM agent_tokens t JOIN agents a ON a.id = t.agent_id
WHERE t.id = $1
  AND t.revoked_at IS NULL
  AND (t.expires_at IS NULL OR t.expires_at > now())
  AND a.revoked_at IS NULL
  AND a.deleted_at IS NULL;

-- name: revoke_agent
UPDATE agents SET revoked_at = now(), updated_at = now()
WHERE id = $1 AND revoked_at IS NULL AND deleted_at IS NULL AND NOT is_owner
RETURNING *;
