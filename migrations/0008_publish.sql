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
