-- The MCP face: every visible change of a task, a run or a step is announced on one channel,
-- `pao_changes` (contracts.CHANGES_CHANNEL), whichever process made it, so MCP subscribers of
-- any replica are told through their process's one LISTEN connection (no polling).
--
-- Payloads: 'task:<id>' (changed), 'task+:<id>' (created), 'task-:<id>' (deleted),
-- 'run:<id>' (a run's row changed), 'step:<run id>:<step id>' (a step's row was written).
-- NOTIFY folds identical payloads of one transaction into one, and a batch that finishes many
-- runs sends one notification per run, delivered on commit.

CREATE FUNCTION pao_notify_task() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        PERFORM pg_notify('pao_changes', 'task+:' || NEW.id);
    ELSIF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('pao_changes', 'task-:' || OLD.id);
    ELSE
        PERFORM pg_notify('pao_changes', 'task:' || NEW.id);
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION pao_notify_run() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pao_changes', 'run:' || NEW.id);
    RETURN NULL;
END $$;

CREATE FUNCTION pao_notify_step() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pao_changes', 'step:' || NEW.run_id || ':' || NEW.step_id);
    RETURN NULL;
END $$;

CREATE TRIGGER tasks_announce_insert_delete AFTER INSERT OR DELETE ON tasks
    FOR EACH ROW EXECUTE FUNCTION pao_notify_task();
-- A write that changes nothing (the same values) is not a change.
CREATE TRIGGER tasks_announce_update AFTER UPDATE ON tasks
    FOR EACH ROW WHEN (OLD.* IS DISTINCT FROM NEW.*) EXECUTE FUNCTION pao_notify_task();

CREATE TRIGGER runs_announce_insert AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION pao_notify_run();
-- Only what a reader of the run sees: a heartbeat (lease_expires_at) is not a change.
CREATE TRIGGER runs_announce_update AFTER UPDATE ON runs
    FOR EACH ROW WHEN (
        OLD.status IS DISTINCT FROM NEW.status
        OR OLD.attempt IS DISTINCT FROM NEW.attempt
        OR OLD.error IS DISTINCT FROM NEW.error
        OR OLD.reason IS DISTINCT FROM NEW.reason
        OR OLD.outputs IS DISTINCT FROM NEW.outputs
        OR OLD.available_at IS DISTINCT FROM NEW.available_at
        OR OLD.cancel_requested IS DISTINCT FROM NEW.cancel_requested
    ) EXECUTE FUNCTION pao_notify_run();

CREATE TRIGGER run_steps_announce AFTER INSERT OR UPDATE ON run_steps
    FOR EACH ROW EXECUTE FUNCTION pao_notify_step();
