-- Events and conditions: matching state, chain depth, run links, condition probes, run-end events
-- and the outbox the Redis relay drains.

-- How many links of an event chain led to this event (0: published from outside; a run's end or a
-- pao.publish_event step publishes at its run's depth + 1).
ALTER TABLE events ADD COLUMN depth integer NOT NULL DEFAULT 0;
-- NULL until the event has been matched against the event tasks. publish_event matches in the
-- transaction that stores the event; events stored by the run-end trigger below are matched by
-- the workers' matchers (LISTEN :EVENTS_CHANNEL), so none is lost between storing and matching.
ALTER TABLE events ADD COLUMN matched_at timestamptz;
CREATE INDEX events_unmatched ON events (id) WHERE matched_at IS NULL;
-- A dedupe_key holds for a window (PAO_EVENT_DEDUPE_SECONDS), not for ever: the lookup is by
-- (topic, key), newest first; concurrent publishes of one key are serialised by an advisory lock.
DROP INDEX events_dedupe;
CREATE INDEX events_dedupe ON events (topic, dedupe_key, created_at DESC) WHERE dedupe_key IS NOT NULL;

-- The event that started a run (trigger = 'event'): get_event lists the runs an event started.
ALTER TABLE runs ADD COLUMN event_id bigint;
CREATE INDEX runs_by_event ON runs (event_id) WHERE event_id IS NOT NULL;

-- Event tasks: `filter`, a template that must render truthy for an event to start a run.
-- Condition tasks: `probe` (one pipeline step), `when` (a template over ${probe...}), and the
-- latest probe's state (value, time, error, whether `when` held), which get_task shows.
ALTER TABLE tasks ADD COLUMN "filter" text;
ALTER TABLE tasks ADD COLUMN probe jsonb;
ALTER TABLE tasks ADD COLUMN "when" text;
ALTER TABLE tasks ADD COLUMN probe_state jsonb;
-- Probers ask "which active condition tasks are due"; next_fire_at is their next probe.
CREATE INDEX tasks_condition_due ON tasks (next_fire_at) WHERE status = 'active' AND schedule_kind = 'condition';

-- Every stored event waits here until the relay has appended it to the outgoing Redis stream;
-- the relay deletes what it delivered, in the transaction that read it.
CREATE TABLE event_outbox (
    event_id    bigint PRIMARY KEY REFERENCES events (id) ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now()
);
-- The relays (one row per outgoing stream) and when one was last running. Events enter the
-- outbox only while a relay has been seen within a day: without REDIS_URL nothing would ever
-- empty it. A relay that is running while Redis is down keeps this fresh, so nothing is lost.
CREATE TABLE event_relays (
    stream   text PRIMARY KEY,
    seen_at  timestamptz NOT NULL DEFAULT now()
);

-- Matchers and relays wake on :EVENTS_CHANNEL when there is work for them: events to match, or
-- events in the outbox.
CREATE FUNCTION pao_event_stored() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    relaying boolean := EXISTS (SELECT 1 FROM event_relays WHERE seen_at > now() - interval '1 day');
BEGIN
    IF relaying THEN
        INSERT INTO event_outbox (event_id) SELECT id FROM stored;
    END IF;
    IF relaying OR EXISTS (SELECT 1 FROM stored WHERE matched_at IS NULL) THEN
        PERFORM pg_notify(:EVENTS_CHANNEL, '');
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER events_to_outbox AFTER INSERT ON events
    REFERENCING NEW TABLE AS stored FOR EACH STATEMENT EXECUTE FUNCTION pao_event_stored();

-- A run that ends (queued or running -> succeeded, failed, cancelled) publishes run.<status>, in
-- the transaction that ends it, whichever path ends it (a worker's completion, a lease that
-- expired with no attempt left, cancel_run, cancel_task); so does a run recorded as failed when it
-- is created (a key that did not render, a filter that failed), except one refused because its
-- event chain is too long (trigger_data.chain_stopped): that refusal ends the chain. One INSERT per
-- statement on runs: a batch of 500 completions writes its 500 events at once. An event no active
-- event task listens for (no task on 'run.<status>' or 'run.*': the index answers) is stored as
-- matched already, so the matchers have nothing to do for it.
-- The runs are read back by id (an AFTER trigger sees their new state).
CREATE FUNCTION pao_publish_run_ends(ended uuid[]) RETURNS void LANGUAGE sql AS $$
    INSERT INTO events (topic, data, source, published_by, depth, matched_at)
    SELECT 'run.' || n.status,
           jsonb_build_object(
               'task_id', n.task_id, 'run_id', n.id, 'status', n.status, 'trigger', n.trigger,
               'attempt', n.attempt, 'outputs', n.outputs, 'error', n.error, 'reason', n.reason,
               'event_id', n.event_id),
           'pao', t.created_by,
           coalesce((n.trigger_data -> 'event' ->> 'depth')::int, 0) + 1,
           CASE WHEN EXISTS (
               SELECT 1 FROM tasks l
               WHERE l.status = 'active' AND l.schedule_kind = 'event' AND l.schedule_expr IN ('run.' || n.status, 'run.*')
           ) THEN NULL ELSE now() END
    FROM runs n
    JOIN tasks t ON t.id = n.task_id
    WHERE n.id = ANY(ended)
    ORDER BY n.id
$$;

-- Whether anything can consume a run.* event: an active event task on run.<status> or run.*, or a
-- Redis relay seen within a day (the outbox's own rule). When nothing can, run ends store no event:
-- writing one per run end, with its trigger and notice, cost a no-op drain about a third of its
-- throughput for events nobody would read.
CREATE FUNCTION pao_run_ends_heard() RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (
               SELECT 1 FROM tasks
               WHERE status = 'active' AND schedule_kind = 'event'
                 AND schedule_expr IN ('run.succeeded', 'run.failed', 'run.cancelled', 'run.*'))
        OR EXISTS (SELECT 1 FROM event_relays WHERE seen_at > now() - interval '1 day')
$$;

-- Every UPDATE of runs (claims and heartbeats too) comes here; most end no run and write nothing.
CREATE FUNCTION pao_run_ended() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended uuid[];
BEGIN
    IF NOT pao_run_ends_heard() THEN
        RETURN NULL;
    END IF;
    ended := ARRAY(
        SELECT n.id FROM ended_new n JOIN ended_old o ON o.id = n.id
        WHERE o.status IN ('queued', 'running') AND n.status IN ('succeeded', 'failed', 'cancelled'));
    IF cardinality(ended) > 0 THEN
        PERFORM pao_publish_run_ends(ended);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_end_events AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS ended_old NEW TABLE AS ended_new
    FOR EACH STATEMENT EXECUTE FUNCTION pao_run_ended();

CREATE FUNCTION pao_run_failed_at_once() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    failed uuid[] := ARRAY(
        SELECT n.id FROM created n
        WHERE n.status = 'failed' AND NOT coalesce((n.trigger_data ->> 'chain_stopped')::boolean, false));
BEGIN
    IF cardinality(failed) > 0 AND pao_run_ends_heard() THEN
        PERFORM pao_publish_run_ends(failed);
    END IF;
    RETURN NULL;
END
$$;
CREATE TRIGGER runs_failed_events AFTER INSERT ON runs
    REFERENCING NEW TABLE AS created
    FOR EACH STATEMENT EXECUTE FUNCTION pao_run_failed_at_once();
