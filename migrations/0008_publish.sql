-- Publishing an event in two statements (store/events.sql: prepare_event, then store_event) instead
-- of a transaction of six. The event tasks an event may start are read through one view, by the
-- publisher and by the matcher of run ends alike.
CREATE VIEW active_event_tasks AS
SELECT id, title, schedule_expr, priority, max_retries, dedupe_key, dedupe_window_seconds, concurrency_key,
       overlap_policy, "filter", created_by
FROM tasks
WHERE status = 'active' AND schedule_kind = 'event'
  -- A snoozed event task lets events pass until its snooze ends.
  AND (snoozed_until IS NULL OR snoozed_until <= now());

-- The tasks an event may start, read by functions with their own plan setting. A statement that
-- reads tasks by a parameter is re-planned on every call once the table is large (Postgres judges
-- a custom plan cheaper than the cached one then): with 10,000 event tasks on other topics that made
-- a publish half as slow again as with 10. These keep one generic plan per session (an index probe
-- per pattern, or per id), whatever the table's size, and the statements that call them stay
-- independent of it too.
CREATE FUNCTION pao_event_tasks(patterns text[]) RETURNS SETOF active_event_tasks
    LANGUAGE plpgsql STABLE ROWS 10 SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY SELECT * FROM active_event_tasks WHERE schedule_expr = ANY(patterns);
END $$;

CREATE FUNCTION pao_active_event_task_ids(ids uuid[]) RETURNS SETOF uuid
    LANGUAGE plpgsql STABLE ROWS 10 SET plan_cache_mode = force_generic_plan AS $$
BEGIN
    RETURN QUERY SELECT id FROM active_event_tasks WHERE id = ANY(ids);
END $$;
