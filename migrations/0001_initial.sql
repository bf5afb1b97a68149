-- The whole data model: agents, tasks, runs, run steps, events, audit log.
-- Every instant is timestamptz (stored in UTC). Status values are CHECKed so an
-- operator querying these tables can rely on the vocabulary.

CREATE TABLE agents (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name          text NOT NULL UNIQUE,
    -- sha256 of the bearer token; the token itself is shown once and never stored.
    token_hash    text UNIQUE,
    scopes        text[] NOT NULL DEFAULT '{}',
    is_owner      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_seen_at  timestamptz,
    revoked_at    timestamptz
);
-- At most one local owner agent (the identity of the stdio session).
CREATE UNIQUE INDEX agents_one_owner ON agents (is_owner) WHERE is_owner;

CREATE TABLE tasks (
    id                     uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    title                  text NOT NULL,
    description            text NOT NULL DEFAULT '',
    schedule_kind          text NOT NULL CHECK (schedule_kind IN ('cron', 'rrule', 'once', 'event', 'condition')),
    schedule_expr          text NOT NULL,
    timezone               text NOT NULL DEFAULT 'Europe/Chisinau',
    payload                jsonb NOT NULL,
    priority               smallint NOT NULL DEFAULT 5 CHECK (priority BETWEEN 1 AND 9),
    dedupe_key             text,
    dedupe_window_seconds  integer NOT NULL DEFAULT 0 CHECK (dedupe_window_seconds >= 0),
    max_retries            integer NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    backoff_strategy       text NOT NULL DEFAULT 'exponential_jitter'
                           CHECK (backoff_strategy IN ('exponential_jitter', 'exponential', 'linear', 'fixed', 'none')),
    backoff_base_seconds   double precision NOT NULL DEFAULT 2 CHECK (backoff_base_seconds >= 0),
    backoff_max_seconds    double precision NOT NULL DEFAULT 300 CHECK (backoff_max_seconds >= 0),
    concurrency_key        text,
    misfire_policy         text NOT NULL DEFAULT 'run_once' CHECK (misfire_policy IN ('skip', 'run_once', 'catch_up')),
    misfire_grace_seconds  integer NOT NULL DEFAULT 3600 CHECK (misfire_grace_seconds >= 0),
    overlap_policy         text NOT NULL DEFAULT 'skip'
                           CHECK (overlap_policy IN ('skip', 'queue', 'cancel_previous', 'allow')),
    status                 text NOT NULL DEFAULT 'active'
                           CHECK (status IN ('active', 'paused', 'completed', 'cancelled')),
    -- The scheduler's whole state: the next instant this task fires (NULL: nothing scheduled).
    next_fire_at           timestamptz,
    snoozed_until          timestamptz,
    last_fired_at          timestamptz,
    created_by             uuid NOT NULL REFERENCES agents (id),
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
-- The scheduler asks only "which active tasks are due": a partial index keeps that cheap at 100k tasks.
CREATE INDEX tasks_due ON tasks (next_fire_at) WHERE status = 'active' AND next_fire_at IS NOT NULL;
CREATE INDEX tasks_event_topic ON tasks (schedule_expr) WHERE status = 'active' AND schedule_kind = 'event';
CREATE INDEX tasks_created_by ON tasks (created_by, created_at DESC);

CREATE TABLE runs (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    task_id           uuid NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    status            text NOT NULL DEFAULT 'queued'
                      CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled', 'skipped')),
    trigger           text NOT NULL CHECK (trigger IN ('schedule', 'manual', 'event', 'condition')),
    trigger_data      jsonb NOT NULL DEFAULT '{}',
    scheduled_for     timestamptz NOT NULL DEFAULT now(),
    priority          smallint NOT NULL DEFAULT 5,
    -- Rendered at enqueue time from the task's templates.
    concurrency_key   text,
    dedupe_key        text,
    deduped_of        uuid REFERENCES runs (id),
    attempt           integer NOT NULL DEFAULT 1,
    max_attempts      integer NOT NULL DEFAULT 4,
    -- A queued run is claimable from this instant (later than scheduled_for while backing off).
    available_at      timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz,
    error             text,
    -- Why a run was skipped, cancelled or retried, in words an agent can repeat to its user.
    reason            text,
    outputs           jsonb,
    -- Lease: the worker holding a running run, and until when. Another worker may take the run
    -- once the lease has expired; every write by the holder is fenced on lease_owner.
    lease_owner       text,
    lease_expires_at  timestamptz,
    cancel_requested  boolean NOT NULL DEFAULT false,
    created_by        uuid REFERENCES agents (id),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);
-- One run per task and scheduled instant: a restart or a second scheduler cannot double a fire.
CREATE UNIQUE INDEX runs_one_per_fire ON runs (task_id, scheduled_for) WHERE trigger = 'schedule';
-- The claim: queued runs in priority order, then by when they became due.
CREATE INDEX runs_claimable ON runs (priority, available_at) WHERE status = 'queued';
-- Expired leases are found here.
CREATE INDEX runs_leased ON runs (lease_expires_at) WHERE status = 'running';
-- Two runs with one concurrency key never run at once, whatever the number of workers.
CREATE UNIQUE INDEX runs_concurrency_exclusive ON runs (concurrency_key)
    WHERE status = 'running' AND concurrency_key IS NOT NULL;
CREATE INDEX runs_task_recent ON runs (task_id, created_at DESC);
CREATE INDEX runs_active_by_task ON runs (task_id) WHERE status IN ('queued', 'running');
CREATE INDEX runs_dedupe ON runs (task_id, dedupe_key, created_at DESC) WHERE dedupe_key IS NOT NULL;

CREATE TABLE run_steps (
    id           bigserial PRIMARY KEY,
    run_id       uuid NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    attempt      integer NOT NULL,
    step_index   integer NOT NULL,
    step_id      text NOT NULL,
    uses         text NOT NULL,
    status       text NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'skipped', 'cancelled')),
    input        jsonb,
    output       jsonb,
    error        text,
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    duration_ms  double precision,
    UNIQUE (run_id, attempt, step_index)
);

CREATE TABLE events (
    id            bigserial PRIMARY KEY,
    topic         text NOT NULL,
    data          jsonb NOT NULL DEFAULT '{}',
    dedupe_key    text,
    source        text NOT NULL DEFAULT 'mcp',
    published_by  uuid REFERENCES agents (id),
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX events_dedupe ON events (topic, dedupe_key) WHERE dedupe_key IS NOT NULL;
CREATE INDEX events_topic_recent ON events (topic, created_at DESC);

CREATE TABLE audit_log (
    id           bigserial PRIMARY KEY,
    agent_id     uuid REFERENCES agents (id),
    action       text NOT NULL,
    target_type  text NOT NULL,
    target_id    text,
    details      jsonb NOT NULL DEFAULT '{}',
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX audit_log_target ON audit_log (target_type, target_id, created_at DESC);
