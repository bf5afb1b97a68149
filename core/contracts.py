"""Names the outside world relies on, each defined once (see DESIGN.md).

SQL files (statements and migrations) refer to the channels as `:RUNS_CHANNEL`,
`:CANCEL_CHANNEL`, `:TASKS_CHANNEL` and `:EVENTS_CHANNEL`; the store's statement
loader and migration runner put these values in.
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
EVENTS_CHANNEL: Final = "pao_events"
"""An event was stored: matchers look for events still to match, relays for events to mirror to Redis."""

CHANNELS: Final = {
    "RUNS_CHANNEL": RUNS_CHANNEL,
    "CANCEL_CHANNEL": CANCEL_CHANNEL,
    "TASKS_CHANNEL": TASKS_CHANNEL,
    "CHANGES_CHANNEL": CHANGES_CHANNEL,
    "EVENTS_CHANNEL": EVENTS_CHANNEL,
}

BUILTIN_SERVER: Final = "pao"
"""The reserved downstream server name of built-in steps (`pao.noop`, `pao.sleep`, ...)."""

SECRET_ENV_PREFIX: Final = "PAO_SECRET_"
"""`${secrets.NAME}` reads the environment variable `PAO_SECRET_NAME`, and nothing else."""

DISTRIBUTION: Final = "pao-orchestrator"
"""The name users install (`pip install pao-orchestrator`)."""

APP_NAME: Final = "pao"
"""The name of the command, the MCP server and the platform data and config folders."""

# Size limits of what agents send (documented in the README; each refusal names the field and the limit).
MAX_TITLE_CHARS: Final = 200
MAX_DESCRIPTION_CHARS: Final = 10_000
MAX_PAYLOAD_CHARS: Final = 262_144
"""A task's payload, as characters of JSON."""
MAX_STEP_ARGUMENTS_CHARS: Final = 65_536
"""One step's `with`, as characters of JSON (before rendering)."""
MAX_EVENT_DATA_CHARS: Final = 65_536
"""An event's `data`, as characters of JSON."""
MAX_REQUEST_BODY_BYTES: Final = 1_048_576
"""The largest HTTP request body the MCP endpoints accept (413 beyond it)."""

RUN_TOPIC_PREFIX: Final = "run."
"""Topics of the events pao publishes when a run ends (`run.succeeded`, `run.failed`, `run.cancelled`);
reserved: agents and streams cannot publish under it."""

MAX_CHAIN_DEPTH: Final = 10
"""How many links an event chain may have (an event a run published, that started a run, that
published ...); a run that would be link 11 fails instead of starting, so a loop stops."""

DEAD_LETTER_SUFFIX: Final = ":dead"
"""Malformed entries of the incoming stream are moved to `<PAO_STREAM_IN>:dead`, with the reason."""

CONSUMER_GROUP: Final = "pao"
"""The Redis consumer group every pao process reads the incoming stream through."""
