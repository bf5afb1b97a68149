"""The engine: task, life-cycle and run services above four sub-rooms (schedule, templating,
downstream, runtime). It knows no transport; `server` calls the `Engine` and nothing below it.

The door of the engine: the server imports only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.app import MAX_WAIT_SECONDS, Engine, migrate_database, open_engine
from pao_orchestrator.engine.changes import Change, ChangeFeed
from pao_orchestrator.engine.doctor import Check, CheckStatus, diagnose, render_checks
from pao_orchestrator.engine.lifecycle import CancelledTask, FireInstant, SchedulePreview, TaskChange
from pao_orchestrator.engine.models import DEFAULT_TIMEZONE, Agent, Run, RunStep, RunSummary, Task, TaskSpec
from pao_orchestrator.engine.schedule import MAX_PREVIEW
from pao_orchestrator.engine.settings import Settings
from pao_orchestrator.engine.tasks import CreatedTask

__all__ = [
    "DEFAULT_TIMEZONE",
    "MAX_PREVIEW",
    "MAX_WAIT_SECONDS",
    "Agent",
    "CancelledTask",
    "Change",
    "ChangeFeed",
    "Check",
    "CheckStatus",
    "CreatedTask",
    "Engine",
    "FireInstant",
    "Run",
    "RunStep",
    "RunSummary",
    "SchedulePreview",
    "Settings",
    "Task",
    "TaskChange",
    "TaskSpec",
    "diagnose",
    "migrate_database",
    "open_engine",
    "render_checks",
]
