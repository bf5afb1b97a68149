"""The engine: task, life-cycle and run services above four sub-rooms (schedule, templating,
downstream, runtime). It knows no transport; `server` calls the `Engine` and nothing below it.

The door of the engine: the server imports only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.app import Engine, migrate_database, open_engine
from pao_orchestrator.engine.events import Event, PublishedEvent, StartedRun
from pao_orchestrator.engine.lifecycle import CancelledTask, FireInstant, SchedulePreview, TaskChange
from pao_orchestrator.engine.models import DEFAULT_TIMEZONE, Agent, Run, RunStep, Task, TaskSpec
from pao_orchestrator.engine.schedule import MAX_PREVIEW
from pao_orchestrator.engine.settings import Settings
from pao_orchestrator.engine.tasks import CreatedTask

__all__ = [
    "DEFAULT_TIMEZONE",
    "MAX_PREVIEW",
    "Agent",
    "CancelledTask",
    "CreatedTask",
    "Engine",
    "Event",
    "FireInstant",
    "PublishedEvent",
    "Run",
    "RunStep",
    "SchedulePreview",
    "Settings",
    "StartedRun",
    "Task",
    "TaskChange",
    "TaskSpec",
    "migrate_database",
    "open_engine",
]
