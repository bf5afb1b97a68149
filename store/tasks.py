"""The `tasks` table: task definitions as tools write them, and the scheduler's state (statements in tasks.sql)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.errors import NotFound
from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record
from pao_orchestrator.vocabulary import (
    BackoffStrategy,
    MisfirePolicy,
    OverlapPolicy,
    ScheduleKind,
    TaskStatus,
)

# A task's definition (what create_task and update_task set), in the order insert_task and
# update_task_fields take them.
DEFINITION = (
    "title",
    "description",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "payload",
    "priority",
    "dedupe_key",
    "dedupe_window_seconds",
    "max_retries",
    "backoff_strategy",
    "backoff_base_seconds",
    "backoff_max_seconds",
    "concurrency_key",
    "misfire_policy",
    "misfire_grace_seconds",
    "overlap_policy",
    "pause_after_failures",
    "filter",
    "probe",
    "when",
)


@dataclass(frozen=True)
class TaskRecord(Record):
    """A row of `tasks`."""

    id: UUID
    title: str
    description: str
    schedule_kind: ScheduleKind
    schedule_expr: str
    timezone: str
    payload: dict[str, Any]
    priority: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    max_retries: int
    backoff_strategy: BackoffStrategy
    backoff_base_seconds: float
    backoff_max_seconds: float
    concurrency_key: str | None
    misfire_policy: MisfirePolicy
    misfire_grace_seconds: int
    overlap_policy: OverlapPolicy
    status: TaskStatus
    next_fire_at: datetime | None
    snoozed_until: datetime | None
    last_fired_at: datetime | None
    schedule_anchor: datetime | None
    pause_after_failures: int | None
    paused_reason: str | None
    paused_at: datetime | None
    failures_counted_from: datetime | None
    filter: str | None
    probe: dict[str, Any] | None
    when: str | None
    probe_state: dict[str, Any] | None
    created_by: UUID
    created_at: datetime
    updated_at: datetime

    @property
    def anchor(self) -> datetime:
        """Where an rrule without DTSTART counts from: the last schedule change, else the creation."""
        return self.schedule_anchor or self.created_at


@dataclass(frozen=True)
class DueTask(Record):
    """A task one scheduler pass has locked, with what the pass needs to decide its fires."""

    id: UUID
    title: str
    schedule_kind: ScheduleKind
    schedule_expr: str
    timezone: str
    anchor: datetime
    next_fire_at: datetime
    snoozed_until: datetime | None
    priority: int
    max_retries: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    concurrency_key: str | None
    misfire_policy: MisfirePolicy
    misfire_grace_seconds: int
    overlap_policy: OverlapPolicy
    active_ids: list[UUID] | None  # the task's queued and running runs, oldest first
    active_running: bool  # one of them is running
    now: datetime  # the pass's clock


@dataclass
class TaskAdvance:
    """Columns of the per-task update that ends a pass (one entry per task)."""

    id: list[UUID] = field(default_factory=list)
    next_fire_at: list[datetime | None] = field(default_factory=list)
    status: list[TaskStatus] = field(default_factory=list)
    last_fired_at: list[datetime | None] = field(default_factory=list)
    clear_snooze: list[bool] = field(default_factory=list)

    def add(
        self,
        task_id: UUID,
        next_fire_at: datetime | None,
        status: TaskStatus,
        last_fired_at: datetime | None,
        clear: bool,
    ) -> None:
        self.id.append(task_id)
        self.next_fire_at.append(next_fire_at)
        self.status.append(status)
        self.last_fired_at.append(last_fired_at)
        self.clear_snooze.append(clear)


async def insert(conn: asyncpg.Connection, fields: Mapping[str, Any], *, created_by: UUID, now: datetime) -> TaskRecord:
    row = await conn.fetchrow(
        sql("insert_task"),
        *(fields[name] for name in DEFINITION),
        fields["status"],
        fields["next_fire_at"],
        created_by,
        now,
    )
    return TaskRecord.from_row(row)


async def lock_live_of_agent(conn: asyncpg.Connection, agent_id: UUID) -> list[TaskRecord]:
    """The agent's tasks that may still fire, locked until the caller's transaction ends."""
    return [TaskRecord.from_row(r) for r in await conn.fetch(sql("lock_live_tasks_of_agent"), agent_id)]


async def get(conn: asyncpg.Connection, task_id: UUID, *, for_update: bool = False) -> TaskRecord:
    row = await conn.fetchrow(sql("get_task_for_update" if for_update else "get_task"), task_id)
    if row is None:
        raise NotFound(f"task {task_id} does not exist; list_tasks shows the tasks you can see")
    return TaskRecord.from_row(row)


async def list_page(
    conn: asyncpg.Connection,
    *,
    status: TaskStatus | None,
    schedule_kind: ScheduleKind | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
    created_by: UUID | None = None,
) -> list[TaskRecord]:
    """A page of tasks, newest first; only `created_by`'s when given."""
    rows = await conn.fetch(
        sql("list_tasks"),
        status,
        schedule_kind,
        before[0] if before else None,
        before[1] if before else None,
        limit,
        created_by,
    )
    return [TaskRecord.from_row(r) for r in rows]


async def update_fields(conn: asyncpg.Connection, task_id: UUID, fields: Mapping[str, Any]) -> TaskRecord:
    """Write a whole validated task definition and its scheduling state."""
    row = await conn.fetchrow(
        sql("update_task_fields"),
        task_id,
        *(fields[name] for name in DEFINITION),
        fields["status"],
        fields["next_fire_at"],
        fields["schedule_anchor"],
        fields["snoozed_until"],
    )
    return TaskRecord.from_row(row)


async def set_state(
    conn: asyncpg.Connection,
    task_id: UUID,
    *,
    status: TaskStatus,
    next_fire_at: datetime | None,
    snoozed_until: datetime | None,
    paused_reason: str | None = None,
) -> TaskRecord:
    """pause, resume, snooze, cancel: the scheduling state of a task the caller has locked.

    Entering `paused` records `paused_reason` and the instant; leaving it clears both and restarts
    the consecutive-failure count (see `pause_after_failures`)."""
    row = await conn.fetchrow(sql("set_task_state"), task_id, status, next_fire_at, snoozed_until, paused_reason)
    return TaskRecord.from_row(row)


async def consecutive_failures(conn: asyncpg.Connection, task: TaskRecord) -> int:
    """How many of the task's newest finished runs (since it was last resumed) failed in a row, up to
    its `pause_after_failures`."""
    if task.pause_after_failures is None:
        return 0
    value = await conn.fetchval(
        sql("consecutive_failures"), task.id, task.failures_counted_from, task.pause_after_failures
    )
    return int(value or 0)


async def claim_due(
    conn: asyncpg.Connection, *, now: datetime | None, lookahead_seconds: float, limit: int
) -> list[DueTask]:
    """Lock up to `limit` due clock-driven tasks (the caller owns the transaction)."""
    rows = await conn.fetch(sql("claim_due_tasks"), now, lookahead_seconds, limit)
    return [DueTask.from_row(r) for r in rows]


async def advance(conn: asyncpg.Connection, rows: TaskAdvance) -> None:
    if rows.id:
        await conn.execute(
            sql("advance_tasks"), rows.id, rows.next_fire_at, rows.status, rows.last_fired_at, rows.clear_snooze
        )


async def next_due(conn: asyncpg.Connection) -> tuple[datetime | None, datetime]:
    """(earliest next fire of an active clock-driven task, the database clock)."""
    row = await conn.fetchrow(sql("next_due"))
    return row["next_due"], row["now"]


async def notify_changed(conn: asyncpg.Connection, task_id: UUID) -> None:
    """Wake every scheduler (on commit): the task's schedule or state changed."""
    await conn.execute(sql("notify_task_changed"), str(task_id))


@dataclass(frozen=True)
class ProbeClaim:
    """A condition task a prober holds: the task, when its probe was due, and the lease that fences it."""

    task: TaskRecord
    due_at: datetime
    leased_until: datetime


async def claim_due_conditions(
    conn: asyncpg.Connection, *, limit: int, default_timeout: float, margin: float
) -> list[ProbeClaim]:
    """Take up to `limit` due condition tasks, each leased for its probe's timeout plus `margin`."""
    rows = await conn.fetch(sql("claim_due_conditions"), limit, default_timeout, margin)
    return [ProbeClaim(TaskRecord.from_row(r), r["due_at"], r["leased_until"]) for r in rows]


async def record_probe(
    conn: asyncpg.Connection,
    task_id: UUID,
    *,
    leased_until: datetime,
    state: dict[str, Any],
    next_probe_at: datetime,
    fired_at: datetime | None,
) -> bool:
    """Write a probe's outcome; False when the prober no longer held the task."""
    value = await conn.fetchval(sql("record_probe"), task_id, leased_until, state, next_probe_at, fired_at)
    return value is not None


async def next_condition_due(conn: asyncpg.Connection) -> float | None:
    """Seconds until the next condition probe is due (None: no active condition task)."""
    value = await conn.fetchval(sql("next_condition_due"))
    return None if value is None else float(value)
