"""The engine: task, life-cycle and run services above four sub-rooms (schedule, templating,
downstream, runtime). It knows no transport; `server` calls the `Engine` and nothing below it.

The door of the engine: the server imports only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.agents import CreatedAgent, UpdatedAgent
from pao_orchestrator.engine.app import Engine, migrate_database, open_engine
from pao_orchestrator.engine.lifecycle import CancelledTask, FireInstant, SchedulePreview, TaskChange
from pao_orchestrator.engine.models import (
    DEFAULT_TIMEZONE,
    Agent,
    AgentInfo,
    AuditEntry,
    Run,
    RunStep,
    Task,
    TaskSpec,
    TokenInfo,
)
from pao_orchestrator.engine.schedule import MAX_PREVIEW
from pao_orchestrator.engine.settings import Settings
from pao_orchestrator.engine.tasks import CreatedTask

__all__ = [
    "DEFAULT_TIMEZONE",
    "MAX_PREVIEW",
    "Agent",
    "AgentInfo",
    "AuditEntry",
    "CancelledTask",
    "CreatedAgent",
    "CreatedTask",
    "Engine",
    "FireInstant",
    "Run",
    "RunStep",
    "SchedulePreview",
    "Settings",
    "Task",
    "TaskChange",
    "TaskSpec",
    "TokenInfo",
    "UpdatedAgent",
    "migrate_database",
    "open_engine",
]
