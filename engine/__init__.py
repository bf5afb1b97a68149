"""The engine: task, life-cycle and run services above four sub-rooms (schedule, templating,
downstream, runtime). It knows no transport; `server` calls the `Engine` and nothing below it.

The door of the engine: the server imports only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.agents import CreatedAgent, UpdatedAgent
from pao_orchestrator.engine.app import MAX_WAIT_SECONDS, Engine, migrate_database, open_engine
from pao_orchestrator.engine.changes import Change, ChangeFeed
from pao_orchestrator.engine.doctor import Check, CheckStatus, diagnose, render_checks
from pao_orchestrator.engine.events import Event, PublishedEvent, StartedRun
from pao_orchestrator.engine.lifecycle import CancelledTask, FireInstant, SchedulePreview, TaskChange
from pao_orchestrator.engine.models import (
    DEFAULT_TIMEZONE,
    Agent,
    AgentInfo,
    AuditEntry,
    Run,
    RunStep,
    RunSummary,
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
    "MAX_WAIT_SECONDS",
    "Agent",
    "AgentInfo",
    "AuditEntry",
    "CancelledTask",
    "Change",
    "ChangeFeed",
    "Check",
    "CheckStatus",
    "CreatedAgent",
    "CreatedTask",
    "Engine",
    "Event",
    "FireInstant",
    "PublishedEvent",
    "Run",
    "RunStep",
    "RunSummary",
    "SchedulePreview",
    "Settings",
    "StartedRun",
    "Task",
    "TaskChange",
    "TaskSpec",
    "TokenInfo",
    "UpdatedAgent",
    "diagnose",
    "migrate_database",
    "open_engine",
    "render_checks",
]
