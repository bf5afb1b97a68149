"""The `events` and `event_outbox` tables: publishing, matching event tasks, reading, relaying
(statements in events.sql)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.errors import NotFound
from pao_orchestrator.store.audit import NewAuditEntry
from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record
from pao_orchestrator.vocabulary import OverlapPolicy, RunStatus


@dataclass(frozen=True)
class EventRecord(Record):
    """A row of `events`."""

    id: int
    topic: str
    data: dict[str, Any]
    dedupe_key: str | None
    source: str
    published_by: UUID | None
    depth: int
    created_at: datetime


@dataclass(frozen=True)
class EventTask(Record):
    """An active event task whose topic pattern matched, with what starting its run needs."""

    id: UUID
    title: str
    schedule_expr: str
    priority: int
    max_retries: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    concurrency_key: str | None
    overlap_policy: OverlapPolicy
    filter: str | None
    created_by: UUID


@dataclass(frozen=True)
class EventRun(Record):
    """A run an event started (or recorded as failed to start)."""

    id: UUID
    task_id: UUID
    status: RunStatus
    event_id: int


@dataclass
class EventRunBatch:
    """Columns of the runs one match inserts (one entry per run)."""

    task_id: list[UUID] = field(default_factory=list)
    status: list[RunStatus] = field(default_factory=list)
    trigger_data: list[dict[str, Any]] = field(default_factory=list)
    priority: list[int] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    concurrency_key: list[str | None] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)
    event_id: list[int] = field(default_factory=list)
    created_by: list[UUID | None] = field(default_factory=list)

    def add(
        self,
        task: EventTask,
        status: RunStatus,
        trigger_data: dict[str, Any],
        event_id: int,
        *,
        concurrency_key: str | None = None,
        error: str | None = None,
    ) -> None:
        self.task_id.append(task.id)
        self.status.append(status)
        self.trigger_data.append(trigger_data)
        self.priority.append(task.priority)
        self.max_attempts.append(task.max_retries + 1)
        self.concurrency_key.append(concurrency_key)
        self.error.append(error)
        self.event_id.append(event_id)
        self.created_by.append(None)

    def __len__(self) -> int:
        return len(self.task_id)


@dataclass(frozen=True)
class OutboxEntry(Record):
    """An event waiting to be appended to the outgoing stream."""

    id: int
    topic: str
    data: dict[str, Any]
    source: str
    dedupe_key: str | None
    depth: int
    created_at: datetime


async def lock_dedupe(conn: asyncpg.Connection, topic: str, dedupe_key: str) -> None:
    """Serialise publishes of one (topic, dedupe key) until the transaction ends."""
    await conn.execute(sql("lock_event_dedupe"), f"event:{topic}:{dedupe_key}")


async def find_duplicate(
    conn: asyncpg.Connection, topic: str, dedupe_key: str, window_seconds: float
) -> EventRecord | None:
    row = await conn.fetchrow(sql("find_event_duplicate"), topic, dedupe_key, window_seconds)
    return None if row is None else EventRecord.from_row(row)


async def claim_unmatched(conn: asyncpg.Connection, limit: int) -> list[EventRecord]:
    """Lock up to `limit` events still to match (the caller owns the transaction)."""
    return [EventRecord.from_row(r) for r in await conn.fetch(sql("claim_unmatched_events"), limit)]


async def mark_matched(conn: asyncpg.Connection, event_ids: list[int]) -> None:
    if event_ids:
        await conn.execute(sql("mark_events_matched"), event_ids)


async def tasks_for_patterns(conn: asyncpg.Connection, patterns: list[str]) -> list[EventTask]:
    """Active event tasks whose topic pattern is one of `patterns` (index lookups, one per pattern)."""
    return [EventTask.from_row(r) for r in await conn.fetch(sql("event_tasks_for_patterns"), patterns)]


@dataclass(frozen=True)
class PreparedEvent:
    """What prepare_event reserves for an event about to be stored: its id, its time, and the tasks
    it may start."""

    id: int
    created_at: datetime
    tasks: list[EventTask]


async def prepare(conn: asyncpg.Connection, patterns: list[str]) -> PreparedEvent:
    """The first statement of a publish: reserve the event's id and time, and read the active event
    tasks whose pattern is one of `patterns`."""
    rows = await conn.fetch(sql("prepare_event"), patterns)
    tasks = [EventTask.from_row(r) for r in rows if r["id"] is not None]
    return PreparedEvent(rows[0]["event_id"], rows[0]["event_at"], tasks)


async def store(
    conn: asyncpg.Connection,
    event: EventRecord,
    batch: EventRunBatch,
    *,
    audit: NewAuditEntry | None = None,
    runs_after: int = 0,
) -> list[EventRun]:
    """The second: store `event` (prepared) with the runs of `batch` and its audit entry, in one
    statement; returns the runs inserted (none for a task no longer active). `runs_after`: runs the
    caller starts after this in the same transaction, counted in the audit entry's details."""
    audited = (
        (None, None, None, None, None, {}, None)  # $19 (action) NULL: no entry
        if audit is None
        else (
            audit.agent_id,
            audit.agent_name,
            audit.action,
            audit.target_type,
            audit.target_id,
            audit.details,
            audit.request_id,
        )
    )
    rows = await conn.fetch(
        sql("store_event"),
        event.id,
        event.topic,
        event.data,
        event.dedupe_key,
        event.source,
        event.published_by,
        event.depth,
        event.created_at,
        batch.task_id,
        batch.status,
        batch.trigger_data,
        batch.priority,
        batch.max_attempts,
        batch.concurrency_key,
        batch.error,
        batch.created_by,
        *audited,
        runs_after,
    )
    return [EventRun.from_row(r) for r in rows]


async def insert_runs(conn: asyncpg.Connection, batch: EventRunBatch) -> list[EventRun]:
    """Insert the runs of a match in one statement; queued ones wake the workers on commit."""
    if not batch:
        return []
    rows = await conn.fetch(
        sql("insert_event_runs"),
        batch.task_id,
        batch.status,
        batch.trigger_data,
        batch.priority,
        batch.max_attempts,
        batch.concurrency_key,
        batch.error,
        batch.event_id,
        batch.created_by,
    )
    return [EventRun.from_row(r) for r in rows]


async def runs_of(conn: asyncpg.Connection, event_id: int, *, created_by: UUID | None = None) -> list[EventRun]:
    """The runs the event started; with `created_by`, only those of that agent's tasks."""
    return [EventRun.from_row(r) for r in await conn.fetch(sql("runs_of_event"), event_id, created_by)]


async def get(conn: asyncpg.Connection, event_id: int) -> EventRecord:
    row = await conn.fetchrow(sql("get_event"), event_id)
    if row is None:
        raise NotFound(f"event {event_id} does not exist; list_events shows recent events")
    return EventRecord.from_row(row)


async def list_page(
    conn: asyncpg.Connection,
    *,
    topic: str | None,
    prefix: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
    published_by: UUID | None = None,
) -> list[EventRecord]:
    rows = await conn.fetch(sql("list_events"), topic, prefix, since, until, before_id, limit, published_by)
    return [EventRecord.from_row(r) for r in rows]


async def take_outbox(conn: asyncpg.Connection, limit: int) -> list[OutboxEntry]:
    """Take the oldest `limit` events waiting for the relay out of the outbox, oldest first; the caller
    owns the transaction and rolls it back if they could not be delivered."""
    return [OutboxEntry.from_row(r) for r in await conn.fetch(sql("take_outbox"), limit)]


async def outbox_lag(conn: asyncpg.Connection) -> tuple[int, float | None, bool]:
    """(events waiting for the relay, seconds the oldest has waited, whether a relay ran within a day)."""
    row = await conn.fetchrow(sql("outbox_lag"))
    oldest = row["oldest_seconds"]
    relays = await conn.fetchval(sql("relays_seen"))
    return row["waiting"], None if oldest is None else float(oldest), relays > 0


async def relay_seen(conn: asyncpg.Connection, stream: str) -> None:
    """Record that a relay for `stream` runs (events enter the outbox while one ran within a day)."""
    await conn.execute(sql("relay_seen"), stream)
