-- The MCP face: every visible change of a task, a run or a step is announced on one channel,
-- `pao_changes` (contracts.CHANGES_CHANNEL), whichever process made it, so MCP subscribers of
-- any replica are told through their process's one LISTEN connection (no polling).
--
-- Payload: '<kind>:<item>,<item>,...' with kind 'task+' (created), 'task' (changed), 'task-'
-- (deleted), 'run' (a run's row changed) or 'step' (a step's row was written); an item is an id,
-- for 'step' '<run id>:<step id>'. Triggers are per statement, with transition tables: a claim or
-- a completion of 256 runs costs one trigger call and two notifications, not 256 of each (a
-- payload holds at most 150 items, under NOTIFY's 8000-byte limit). Delivered on commit.

CREATE FUNCTION pao_announce(kind text, items text[]) RETURNS void LANGUAGE sql AS $$
    SELECT pg_notify('pao_changes', kind || ':' || string_agg(item, ','))
    FROM (SELECT item, (row_number() OVER () - 1) / 150 AS chunk FROM unnest(items) AS item) c
    GROUP BY chunk;
$$;

CREATE FUNCTION pao_announce_tasks() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pao_announce('task+', array(SELECT id::text FROM new_rows));
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pao_announce('task-', array(SELECT id::text FROM old_rows));
    ELSE
        -- A write that changes nothing (the same values) is not a change.
        PERFORM pao_announce('task', array(
            SELECT n.id::text FROM new_rows n JOIN old_rows o ON o.id = n.id WHERE (o.*) IS DISTINCT FROM (n.*)));
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION pao_announce_runs() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pao_announce('run', array(SELECT id::text FROM new_rows));
    ELSE
        -- Only what a reader of the run sees: a heartbeat (lease_expires_at) is not a change.
        PERFORM pao_announce('run', array(
            SELECT n.id::text FROM new_rows n JOIN old_rows o ON o.id = n.id
            WHERE o.status IS DISTINCT FROM n.status
               OR o.attempt IS DISTINCT FROM n.attempt
               OR o.error IS DISTINCT FROM n.error
               OR o.reason IS DISTINCT FROM n.reason
               OR o.outputs IS DISTINCT FROM n.outputs
               OR o.available_at IS DISTINCT FROM n.available_at
               OR o.cancel_requested IS DISTINCT FROM n.cancel_requested));
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION pao_announce_steps() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pao_announce('step', array(SELECT DISTINCT run_id || ':' || step_id FROM new_rows));
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_announce_insert AFTER INSERT ON tasks
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_tasks();
CREATE TRIGGER tasks_announce_update AFTER UPDATE ON tasks
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_tasks();
CREATE TRIGGER tasks_announce_delete AFTER DELETE ON tasks
    REFERENCING OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_tasks();

CREATE TRIGGER runs_announce_insert AFTER INSERT ON runs
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_runs();
CREATE TRIGGER runs_announce_update AFTER UPDATE ON runs
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_runs();

CREATE TRIGGER run_steps_announce_insert AFTER INSERT ON run_steps
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_steps();
CREATE TRIGGER run_steps_announce_update AFTER UPDATE ON run_steps
    REFERENCING NEW TABLE AS new_rows FOR EACH STATEMENT EXECUTE FUNCTION pao_announce_steps();
