-- Agents with scopes and many tokens, deletion that keeps history, and an audit log that says
-- who, what, target, when, request and outcome.

-- A token is `pao_<id><secret>`: the id finds the row, and only a sha256 of the secret part is
-- stored (compared in constant time). Tokens are shown once, may expire, and are revoked one by
-- one or all together with their agent.
CREATE TABLE agent_tokens (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    agent_id     uuid NOT NULL REFERENCES agents (id),
    secret_hash  text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX agent_tokens_agent ON agent_tokens (agent_id, created_at);

-- Never used before this migration (no tool could set it): tokens live in agent_tokens now.
ALTER TABLE agents DROP COLUMN token_hash;
ALTER TABLE agents ADD COLUMN description text NOT NULL DEFAULT '';
ALTER TABLE agents ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
-- A deleted agent keeps its row: its tasks, runs and audit entries still name it.
ALTER TABLE agents ADD COLUMN deleted_at timestamptz;
ALTER TABLE agents DROP CONSTRAINT agents_name_key;
CREATE UNIQUE INDEX agents_live_name ON agents (name) WHERE deleted_at IS NULL;
ALTER TABLE agents ADD CONSTRAINT agents_scopes_known
    CHECK (scopes <@ ARRAY['tasks:read', 'tasks:write', 'runs:read', 'runs:write', 'events:publish', 'admin']::text[]);

-- The audit entry names its agent even after the agent is deleted, carries the MCP request id,
-- and says how the call ended: 'ok', or 'denied' (failed authentication or authorization).
ALTER TABLE audit_log ADD COLUMN agent_name text;
ALTER TABLE audit_log ADD COLUMN request_id text;
ALTER TABLE audit_log ADD COLUMN outcome text NOT NULL DEFAULT 'ok' CHECK (outcome IN ('ok', 'denied', 'error'));
UPDATE audit_log a SET agent_name = g.name FROM agents g WHERE g.id = a.agent_id;
CREATE INDEX audit_log_recent ON audit_log (created_at DESC, id DESC);
CREATE INDEX audit_log_agent ON audit_log (agent_id, created_at DESC);
