"""Runs as agents see them: run_now, reading runs back, cancelling."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import asyncpg

from pao_orchestrator.engine.models import Agent, Run, RunStep, RunSummary
from pao_orchestrator.engine.paging import decode_cursor, page
from pao_orchestrator.engine.runtime import enqueue
from pao_orchestrator.errors import Conflict, NotFound
from pao_orchestrator.store import RunRecord, StepRow
from pao_orchestrator.store import audit as audit_store
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import steps as step_store
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import RunStatus, TaskStatus, Trigger

Clock = Callable[[], datetime]


async def run_now(db: asyncpg.Pool, caller: Agent, task_id: UUID, *, clock: Clock) -> RunRecord:
    """Enqueue a manual run of a task now; returns the run."""
    now = clock()
    async with db.acquire() as conn, conn.transaction():
        task = await task_store.get(conn, task_id)
        if task.status == TaskStatus.CANCELLED:
            raise Conflict(f"task {task_id} is cancelled; create a new task instead")
        run = await enqueue(
            conn,
            task,
            trigger=Trigger.MANUAL,
            trigger_data={"by": caller.name},
            scheduled_for=now,
            created_by=caller.id,
        )
        await audit_store.record(
            conn,
            agent_id=caller.id,
            action="run_now",
            target_type="task",
            target_id=str(task_id),
            details={"run_id": str(run.id), "status": run.status},
        )
    return run


def to_run(row: RunRecord, steps: list[StepRow] | None = None) -> Run:
    return Run.model_validate({**row.as_dict(), "steps": [RunStep.model_validate(s.as_dict()) for s in steps or []]})


def to_summary(row: RunRecord) -> RunSummary:
    return RunSummary.model_validate(row.as_dict())


async def get_run(db: asyncpg.Pool, run_id: UUID, *, caller: Agent | None = None) -> Run:
    """One run with every step of every attempt. `caller`: who reads (reads are not scoped to it yet)."""
    async with db.acquire() as conn:
        row = await run_store.get(conn, run_id)
        steps = await step_store.of_run(conn, run_id)
    return to_run(row, steps)


async def get_step(db: asyncpg.Pool, run_id: UUID, step_id: str, *, caller: Agent | None = None) -> RunStep:
    """The newest attempt of one step of a run, in full."""
    async with db.acquire() as conn:
        await run_store.get(conn, run_id)  # NotFound names the run when it is the run that is missing
        steps = [s for s in await step_store.of_run(conn, run_id) if s.step_id == step_id]
    if not steps:
        raise NotFound(f"run {run_id} has no recorded step {step_id!r} (yet)")
    newest = max(steps, key=lambda s: (s.attempt, s.started_at))
    return RunStep.model_validate(newest.as_dict())


async def list_runs(
    db: asyncpg.Pool,
    *,
    task_id: UUID | None,
    status: RunStatus | None,
    limit: int,
    cursor: str | None,
    caller: Agent | None = None,
) -> tuple[list[RunSummary], str | None]:
    before = decode_cursor(cursor)
    async with db.acquire() as conn:
        rows = await run_store.list_page(conn, task_id=task_id, status=status, before=before, limit=limit + 1)
    rows, next_cursor = page(rows, limit)
    return [to_summary(r) for r in rows], next_cursor


async def cancel_run(db: asyncpg.Pool, caller: Agent, run_id: UUID) -> Run:
    """Cancel a queued run, or stop a running one, its step in flight included (it then ends as `cancelled`)."""
    async with db.acquire() as conn, conn.transaction():
        row = await run_store.cancel(conn, run_id, f"cancelled by {caller.name} (cancel_run)")
        await audit_store.record(
            conn,
            agent_id=caller.id,
            action="cancel_run",
            target_type="run",
            target_id=str(run_id),
            details={"status": row.status},
        )
    return to_run(row)
