"""Names the outside world relies on, each defined once (see DESIGN.md).

SQL files refer to the channels as `:RUNS_CHANNEL`, `:CANCEL_CHANNEL` and
`:TASKS_CHANNEL`; the store's statement loader puts these values in.
"""

from __future__ import annotations

from typing import Final

# Postgres NOTIFY channels.
RUNS_CHANNEL: Final = "pao_runs"
"""A run became claimable: workers wake and claim."""
CANCEL_CHANNEL: Final = "pao_cancel"
"""cancel_run on a running run; the payload is the run id."""
TASKS_CHANNEL: Final = "pao_tasks"
"""A task was created or changed: schedulers re-read when to wake."""
CHANGES_CHANNEL: Final = "pao_changes"
"""Any visible change of a task, run or step (database triggers): MCP subscriptions are fed from it."""

CHANNELS: Final = {
    "RUNS_CHANNEL": RUNS_CHANNEL,
    "CANCEL_CHANNEL": CANCEL_CHANNEL,
    "TASKS_CHANNEL": TASKS_CHANNEL,
    "CHANGES_CHANNEL": CHANGES_CHANNEL,
}

BUILTIN_SERVER: Final = "pao"
"""The reserved downstream server name of built-in steps (`pao.noop`, `pao.sleep`, ...)."""

SECRET_ENV_PREFIX: Final = "PAO_SECRET_"
"""`${secrets.NAME}` reads the environment variable `PAO_SECRET_NAME`, and nothing else."""

DISTRIBUTION: Final = "pao-orchestrator"
"""The name users install (`pip install pao-orchestrator`)."""

APP_NAME: Final = "pao"
"""The name of the command, the MCP server and the platform data and config folders."""
