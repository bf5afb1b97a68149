"""Reading and writing `runs` and `run_steps`: enqueue, claim, lease, finish."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pao_orchestrator.errors import NotFound
from pao_orchestrator.store.queries import sql


async def insert(
    conn: asyncpg.Connection,
    *,
    task_id: UUID,
    status: str,
    trigger: str,
    trigger_data: dict[str, Any],
    scheduled_for: datetime,
    priority: int,
    concurrency_key: str | None,
    dedupe_key: str | None,
    deduped_of: UUID | None,
    max_attempts: int,
    available_at: datetime,
    reason: str | None,
    created_by: UUID | None,
) -> dict[str, Any]:
    row = await conn.fetchrow(
        sql("insert_run"),
        task_id,
        status,
        trigger,
        trigger_data,
        scheduled_for,
        priority,
        concurrency_key,
        dedupe_key,
        deduped_of,
        max_attempts,
        available_at,
        reason,
        created_by,
    )
    return dict(row)


async def find_duplicate(conn: asyncpg.Connection, task_id: UUID, dedupe_key: str, window_seconds: int) -> UUID | None:
    value = await conn.fetchval(sql("find_duplicate_run"), task_id, dedupe_key, window_seconds)
    return value  # type: ignore[no-any-return]


async def get(conn: asyncpg.Connection, run_id: UUID) -> dict[str, Any]:
    row = await conn.fetchrow(sql("get_run"), run_id)
    if row is None:
        raise NotFound(f"run {run_id} does not exist; list_runs shows recent runs")
    return dict(row)


async def steps(conn: asyncpg.Connection, run_id: UUID) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql("get_run_steps"), run_id)]


async def list_page(
    conn: asyncpg.Connection,
    *,
    task_id: UUID | None,
    status: str | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        sql("list_runs"), task_id, status, before[0] if before else None, before[1] if before else None, limit
    )
    return [dict(r) for r in rows]


async def claim(conn: asyncpg.Connection, worker: str, limit: int, lease_seconds: float) -> list[dict[str, Any]]:
    """Claim up to `limit` due runs; a concurrency-key race with another worker yields an empty claim."""
    try:
        rows = await conn.fetch(sql("claim_runs"), worker, limit, lease_seconds)
    except asyncpg.UniqueViolationError:
        # Another worker took a run with the same concurrency key after our snapshot; the
        # next claim sees it running and passes over that key.
        return []
    return [dict(r) for r in rows]


async def next_due_in(conn: asyncpg.Connection) -> float | None:
    """Seconds (by the database clock) until the earliest queued run becomes claimable; None if none is queued."""
    value = await conn.fetchval(sql("next_queued_due_in"))
    return None if value is None else float(value)


async def renew_leases(
    conn: asyncpg.Connection, worker: str, run_ids: list[UUID], lease_seconds: float
) -> dict[UUID, bool]:
    """Extend the leases; map each run still held to whether cancellation was requested."""
    rows = await conn.fetch(sql("renew_leases"), worker, run_ids, lease_seconds)
    return {r["id"]: r["cancel_requested"] for r in rows}


async def requeue_expired(conn: asyncpg.Connection) -> list[dict[str, Any]]:
    return [dict(r) for r in await conn.fetch(sql("requeue_expired_leases"))]


async def release(conn: asyncpg.Connection, worker: str, run_ids: list[UUID]) -> list[UUID]:
    return [r["id"] for r in await conn.fetch(sql("release_runs"), worker, run_ids)]


@dataclass(frozen=True)
class StepRecord:
    """A finished step, as written to run_steps."""

    attempt: int
    step_index: int
    step_id: str
    uses: str
    status: str
    input: Any
    output: Any
    error: str | None
    started_at: datetime
    duration_ms: float


@dataclass(frozen=True)
class Completion:
    """The end of a run, with the record of the step that ended it (if that step is not yet written)."""

    run_id: UUID
    status: str
    error: str | None
    outputs: dict[str, Any] | None
    reason: str | None = None
    step: StepRecord | None = None


async def finish_many(conn: asyncpg.Connection, worker: str, items: list[Completion]) -> set[UUID]:
    """Record the end of every run in `items`; return the ids `worker` still held the lease of."""
    steps = [c.step for c in items]
    rows = await conn.fetch(
        sql("finish_runs"),
        [c.run_id for c in items],
        worker,
        [c.status for c in items],
        [c.error for c in items],
        [c.outputs for c in items],
        [c.reason for c in items],
        [s.attempt if s else None for s in steps],
        [s.step_index if s else None for s in steps],
        [s.step_id if s else None for s in steps],
        [s.uses if s else None for s in steps],
        [s.status if s else None for s in steps],
        [s.input if s else None for s in steps],
        [s.output if s else None for s in steps],
        [s.error if s else None for s in steps],
        [s.started_at if s else None for s in steps],
        [s.duration_ms if s else None for s in steps],
    )
    return {r["id"] for r in rows}


async def retry(
    conn: asyncpg.Connection, run_id: UUID, worker: str, *, error: str, reason: str, delay_seconds: float
) -> bool:
    return await conn.fetchval(sql("retry_run"), run_id, worker, error, reason, delay_seconds) is not None


async def previous_outputs(conn: asyncpg.Connection, run_id: UUID) -> dict[int, Any]:
    """step_index -> output of every step that already succeeded in some attempt."""
    return {r["step_index"]: r["output"] for r in await conn.fetch(sql("previous_step_outputs"), run_id)}


async def start_step(
    conn: asyncpg.Connection,
    *,
    run_id: UUID,
    attempt: int,
    step_index: int,
    step_id: str,
    uses: str,
    input: Any,
    worker: str,
) -> int | None:
    """Record a step as running; None when the worker lost the run's lease."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        sql("start_step"), run_id, attempt, step_index, step_id, uses, input, worker
    )


async def finish_step(
    conn: asyncpg.Connection,
    step_row_id: int,
    *,
    status: str,
    output: Any,
    error: str | None,
    duration_ms: float,
) -> None:
    await conn.execute(sql("finish_step"), step_row_id, status, output, error, duration_ms)


async def record_step(conn: asyncpg.Connection, *, run_id: UUID, record: StepRecord, worker: str) -> bool:
    """Record a finished step in one write; False when the worker lost the run's lease."""
    row_id = await conn.fetchval(
        sql("record_step"),
        run_id,
        record.attempt,
        record.step_index,
        record.step_id,
        record.uses,
        record.status,
        record.input,
        record.output,
        record.error,
        record.started_at,
        record.duration_ms,
        worker,
    )
    return row_id is not None


async def cancel(conn: asyncpg.Connection, run_id: UUID, reason: str) -> dict[str, Any]:
    """Cancel a queued run at once, or ask the worker of a running one to stop between steps.

    Returns the run as it now stands; a finished run is returned unchanged.
    """
    row = await conn.fetchrow(sql("cancel_queued_run"), run_id, reason)
    if row is None:
        row = await conn.fetchrow(sql("request_run_cancel"), run_id, reason)
    if row is None:
        return await get(conn, run_id)
    return dict(row)
