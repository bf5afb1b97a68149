"""The SQL of the scheduler and of the task life-cycle tools (statements in scheduler.sql)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.tasks import DEFINITION


@dataclass
class RunBatch:
    """Columns of the rows one pass inserts into `runs` (one entry per fire)."""

    task_id: list[UUID] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    scheduled_for: list[datetime] = field(default_factory=list)
    priority: list[int] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)
    concurrency_key: list[str | None] = field(default_factory=list)
    catch_up: list[bool] = field(default_factory=list)

    def add(
        self,
        task_id: UUID,
        status: str,
        scheduled_for: datetime,
        *,
        priority: int,
        max_attempts: int,
        reason: str | None = None,
        concurrency_key: str | None = None,
        catch_up: bool = False,
    ) -> None:
        self.task_id.append(task_id)
        self.status.append(status)
        self.scheduled_for.append(scheduled_for)
        self.priority.append(priority)
        self.max_attempts.append(max_attempts)
        self.reason.append(reason)
        self.concurrency_key.append(concurrency_key)
        self.catch_up.append(catch_up)

    def __len__(self) -> int:
        return len(self.task_id)


@dataclass
class TaskAdvance:
    """Columns of the per-task update that ends a pass."""

    id: list[UUID] = field(default_factory=list)
    next_fire_at: list[datetime | None] = field(default_factory=list)
    status: list[str] = field(default_factory=list)
    last_fired_at: list[datetime | None] = field(default_factory=list)
    clear_snooze: list[bool] = field(default_factory=list)

    def add(
        self, task_id: UUID, next_fire_at: datetime | None, status: str, last_fired_at: datetime | None, clear: bool
    ) -> None:
        self.id.append(task_id)
        self.next_fire_at.append(next_fire_at)
        self.status.append(status)
        self.last_fired_at.append(last_fired_at)
        self.clear_snooze.append(clear)


async def claim_due(
    conn: asyncpg.Connection, *, now: datetime | None, lookahead_seconds: float, limit: int
) -> list[asyncpg.Record]:
    """Lock up to `limit` due clock-driven tasks (caller owns the transaction)."""
    return await conn.fetch(sql("claim_due_tasks"), now, lookahead_seconds, limit)  # type: ignore[no-any-return]


async def insert_runs(conn: asyncpg.Connection, batch: RunBatch) -> list[asyncpg.Record]:
    """Insert the batch; returns the rows actually inserted (a fire that already has a row is left alone)."""
    if not batch:
        return []
    return await conn.fetch(  # type: ignore[no-any-return]
        sql("insert_schedule_runs"),
        batch.task_id,
        batch.status,
        batch.scheduled_for,
        batch.priority,
        batch.max_attempts,
        batch.reason,
        batch.concurrency_key,
        batch.catch_up,
    )


async def advance(conn: asyncpg.Connection, rows: TaskAdvance) -> None:
    if rows.id:
        await conn.execute(
            sql("advance_tasks"), rows.id, rows.next_fire_at, rows.status, rows.last_fired_at, rows.clear_snooze
        )


async def next_due(conn: asyncpg.Connection) -> tuple[datetime | None, datetime]:
    """(earliest next fire of an active clock-driven task, the database clock)."""
    row = await conn.fetchrow(sql("next_due"))
    return row["next_due"], row["now"]


async def wake_workers_at(conn: asyncpg.Connection, instant: datetime) -> tuple[bool, datetime]:
    """NOTIFY the workers if the database clock has reached `instant`; (notified, database clock)."""
    row = await conn.fetchrow(sql("wake_workers_at"), instant)
    return row["notified"], row["now"]


async def cancel_runs(conn: asyncpg.Connection, run_ids: Sequence[UUID], reasons: Sequence[str]) -> dict[UUID, str]:
    """Cancel queued runs, ask running ones to stop; run id -> 'cancelled' | 'stopping'."""
    if not run_ids:
        return {}
    rows = await conn.fetch(sql("cancel_runs"), list(run_ids), list(reasons))
    return {r["id"]: r["outcome"] for r in rows}


async def active_runs(conn: asyncpg.Connection, task_id: UUID) -> list[asyncpg.Record]:
    return await conn.fetch(sql("active_runs_of_task"), task_id)  # type: ignore[no-any-return]


async def withdraw_reservations(conn: asyncpg.Connection, task_id: UUID, reason: str) -> list[datetime]:
    """Remove runs created ahead of their (future) instant; returns those instants."""
    return [r["scheduled_for"] for r in await conn.fetch(sql("withdraw_reservations"), task_id, reason)]


async def set_state(
    conn: asyncpg.Connection,
    task_id: UUID,
    *,
    status: str,
    next_fire_at: datetime | None,
    snoozed_until: datetime | None,
) -> dict[str, Any]:
    row = await conn.fetchrow(sql("set_task_state"), task_id, status, next_fire_at, snoozed_until)
    return dict(row)


async def update_fields(conn: asyncpg.Connection, task_id: UUID, fields: dict[str, Any]) -> dict[str, Any]:
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
    return dict(row)
