"""The store: Postgres access, the embedded Postgres and the migration runner.

The door of the store room: the engine imports only the names below. One
module and one SQL file per table family (`tasks`, `runs`, `steps`, `agents`,
`audit`, `events`; `streams` is the Redis side); each module's functions take a connection (the caller owns the
transaction) and return typed records.
"""

from __future__ import annotations

from pao_orchestrator.store import agents, audit, diagnostics, events, retention, runs, steps, streams, tasks
from pao_orchestrator.store.agents import AgentRecord
from pao_orchestrator.store.audit import NewAuditEntry
from pao_orchestrator.store.database import DATABASE_ERRORS, Connection, Pool, create_pool, open_database
from pao_orchestrator.store.embedded import EmbeddedPostgres
from pao_orchestrator.store.events import EventRecord, EventRun, EventRunBatch, EventTask, OutboxEntry, PreparedEvent
from pao_orchestrator.store.listener import Listener
from pao_orchestrator.store.migrator import latest_version, migrate, schema_version
from pao_orchestrator.store.runs import ClaimedRun, Completion, InsertedRun, NewRun, RunBatch, RunRecord
from pao_orchestrator.store.scratch import (
    data_folder,
    database_name,
    postgres_server,
    scratch_database,
    with_database,
)
from pao_orchestrator.store.steps import StepRecord, StepRow
from pao_orchestrator.store.tasks import DueTask, ProbeClaim, TaskAdvance, TaskRecord

__all__ = [
    "DATABASE_ERRORS",
    "AgentRecord",
    "ClaimedRun",
    "Completion",
    "Connection",
    "DueTask",
    "EmbeddedPostgres",
    "EventRecord",
    "EventRun",
    "EventRunBatch",
    "EventTask",
    "InsertedRun",
    "Listener",
    "NewAuditEntry",
    "NewRun",
    "OutboxEntry",
    "Pool",
    "PreparedEvent",
    "ProbeClaim",
    "RunBatch",
    "RunRecord",
    "StepRecord",
    "StepRow",
    "TaskAdvance",
    "TaskRecord",
    "agents",
    "audit",
    "create_pool",
    "data_folder",
    "database_name",
    "diagnostics",
    "events",
    "latest_version",
    "migrate",
    "open_database",
    "postgres_server",
    "retention",
    "runs",
    "schema_version",
    "scratch_database",
    "steps",
    "streams",
    "tasks",
    "with_database",
]
