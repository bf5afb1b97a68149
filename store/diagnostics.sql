-- Statements `pao doctor` runs (store/diagnostics.py).

-- name: server_version
SELECT current_setting('server_version') AS version, current_database() AS database;
