-- Statements on `events` and `event_outbox` (store/events.py): publishing, matching, reading, relaying.
-- Placeholders are asyncpg's $1, $2 ...; values are never formatted in.

-- name: lock_event_dedupe
-- Serialises publishes of one (topic, dedupe key) until the transaction ends, so of 50 concurrent
-- publishes exactly one stores the event and the others find it.
SELECT pg_advisory_xact_lock(hashtextextended($1, 1));

-- name: find_event_duplicate
-- The newest event of this topic and key inside the dedupe window (events_dedupe).
SELECT * FROM events
WHERE topic = $1 AND dedupe_key = $2 AND created_at > now() - make_interval(secs => $3::float8)
ORDER BY created_at DESC
LIMIT 1;

-- name: claim_unmatched_events
-- Events stored without being matched (run ends, written by a trigger), oldest first. SKIP LOCKED:
-- matchers of several processes share the backlog; each event is matched by exactly one of them.
SELECT * FROM events WHERE matched_at IS NULL ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED;

-- name: mark_events_matched
UPDATE events SET matched_at = now() WHERE id = ANY($1::bigint[]);

-- name: event_tasks_for_patterns
-- The active event tasks whose topic pattern is one of $1: the topic itself, each of its prefixes
-- with '.*', and '*'. One probe of the partial index tasks_event_topic per pattern (pao_event_tasks,
-- migration 0008), so the cost does not grow with the number of event tasks on other topics.
SELECT * FROM pao_event_tasks($1::text[]);

-- name: prepare_event
-- The first of the two statements of a publish: the id and the time the event will have (this
-- transaction's now()), and the tasks it may start (event_tasks_for_patterns, $1 the patterns).
-- One row per task; one row with NULL task columns when there is none.
WITH e AS (SELECT nextval(pg_get_serial_sequence('events', 'id')) AS event_id, now() AS event_at)
SELECT e.event_id, e.event_at, t.* FROM e LEFT JOIN pao_event_tasks($1::text[]) t ON true;

-- name: store_event
-- The second: the event ($1-$8), the runs it starts ($9-$16, as insert_event_runs) and its audit
-- entry ($17-$23, none when $19 is NULL; its details get 'runs': the runs inserted here plus $24
-- started after it in the same transaction), in one statement, so one commit makes all of them or
-- none. Runs start only for tasks still active: one cancelled since prepare_event starts nothing.
-- Queued runs wake the workers on commit, as every enqueue does.
WITH event AS (
    INSERT INTO events (id, topic, data, dedupe_key, source, published_by, depth, created_at, matched_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8)
    RETURNING id
), input AS (
    SELECT i.* FROM unnest($9::uuid[], $10::text[], $11::jsonb[], $12::int[], $13::int[], $14::text[], $15::text[],
                           $16::uuid[])
        AS i(task_id, status, trigger_data, priority, max_attempts, concurrency_key, error, created_by)
    -- Looked up by the ids given (the primary key), in a function whose plan does not depend on the
    -- number of tasks (migration 0008): a publish costs the same with 10 event tasks or 10,000.
    WHERE i.task_id IN (SELECT pao_active_event_task_ids($9::uuid[]))
), inserted AS (
    INSERT INTO runs (task_id, status, trigger, trigger_data, scheduled_for, priority, concurrency_key,
                      max_attempts, available_at, error, reason, event_id, created_by, finished_at)
    SELECT task_id, status, 'event', trigger_data, now(), priority, concurrency_key, max_attempts, now(), error,
           CASE WHEN status = 'failed' THEN 'failed without running: the event could not start it' END,
           (SELECT id FROM event), created_by, CASE WHEN status <> 'queued' THEN now() END
    FROM input
    RETURNING id, task_id, status, event_id
), audited AS (
    INSERT INTO audit_log (agent_id, agent_name, action, target_type, target_id, details, request_id, outcome)
    SELECT $17, $18, $19, $20, $21, $22::jsonb || jsonb_build_object('runs', (SELECT count(*) FROM inserted) + $24),
           $23, 'ok'
    WHERE $19::text IS NOT NULL
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '') WHERE EXISTS (SELECT 1 FROM inserted WHERE status = 'queued')
)
SELECT inserted.* FROM inserted LEFT JOIN wake ON true;

-- name: insert_event_runs
-- The runs events start, in one statement. Queued ones wake the workers on commit (the same NOTIFY
-- as every enqueue); 'failed' rows record an event that matched but could not start its run (a
-- filter that failed to render, a chain past its depth), with the error.
WITH input AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::int[], $5::int[], $6::text[], $7::text[],
                         $8::bigint[], $9::uuid[])
        AS i(task_id, status, trigger_data, priority, max_attempts, concurrency_key, error, event_id, created_by)
), inserted AS (
    INSERT INTO runs (task_id, status, trigger, trigger_data, scheduled_for, priority, concurrency_key,
                      max_attempts, available_at, error, reason, event_id, created_by, finished_at)
    SELECT task_id, status, 'event', trigger_data, now(), priority, concurrency_key, max_attempts, now(), error,
           CASE WHEN status = 'failed' THEN 'failed without running: the event could not start it' END,
           event_id, created_by, CASE WHEN status <> 'queued' THEN now() END
    FROM input
    RETURNING id, task_id, status, event_id
), wake AS (
    SELECT pg_notify(:RUNS_CHANNEL, '') WHERE EXISTS (SELECT 1 FROM inserted WHERE status = 'queued')
)
SELECT inserted.* FROM inserted LEFT JOIN wake ON true;

-- name: runs_of_event
-- $2: only the runs of this agent's tasks (NULL: all, for admins); a run belongs to its task's agent.
SELECT r.id, r.task_id, r.status, r.event_id FROM runs r JOIN tasks t ON t.id = r.task_id
WHERE r.event_id = $1 AND ($2::uuid IS NULL OR t.created_by = $2)
ORDER BY r.created_at, r.id;

-- name: get_event
SELECT * FROM events WHERE id = $1;

-- name: list_events
-- Newest first, keyset-paginated on id ($5: continue below it). $1 an exact topic, $2 a topic
-- prefix (a pattern 'home.*' gives 'home.'), $3/$4 the time range, $7 the publisher.
SELECT * FROM events
WHERE ($1::text IS NULL OR topic = $1)
  AND ($2::text IS NULL OR starts_with(topic, $2))
  AND ($3::timestamptz IS NULL OR created_at >= $3)
  AND ($4::timestamptz IS NULL OR created_at < $4)
  AND ($5::bigint IS NULL OR id < $5)
  -- An agent without admin lists only the events it published.
  AND ($7::uuid IS NULL OR published_by = $7)
ORDER BY id DESC
LIMIT $6;

-- name: take_outbox
-- The relay's batch: the oldest events not yet appended to the outgoing stream, taken out of the
-- outbox in one statement (SKIP LOCKED: relays of several processes never take one twice). The
-- caller appends them to Redis before it commits; if Redis fails, the transaction rolls back and
-- the rows are back in the outbox.
WITH taken AS (
    DELETE FROM event_outbox
    WHERE event_id IN (SELECT event_id FROM event_outbox ORDER BY event_id LIMIT $1 FOR UPDATE SKIP LOCKED)
    RETURNING event_id
)
SELECT e.id, e.topic, e.data, e.source, e.dedupe_key, e.depth, e.created_at
FROM taken JOIN events e ON e.id = taken.event_id
ORDER BY e.id;

-- name: outbox_lag
-- What health reports of the relay: events waiting for it, and how long the oldest has waited.
SELECT count(*) AS waiting, extract(epoch FROM now() - min(created_at)) AS oldest_seconds FROM event_outbox;

-- name: relay_seen
-- A relay says it runs: from now on (for a day after its last word) stored events enter the outbox.
INSERT INTO event_relays (stream, seen_at) VALUES ($1, now())
ON CONFLICT (stream) DO UPDATE SET seen_at = now();

-- name: relays_seen
SELECT count(*) FROM event_relays WHERE seen_at > now() - interval '1 day';
