"""Runs as agents see them: run_now, reading runs back, cancelling."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from uuid import UUID

import asyncpg

from pao_orchestrator.engine import access, audit
from pao_orchestrator.engine.models import Agent, Run, RunStep, RunSummary
from pao_orchestrator.engine.paging import decode_cursor, page
from pao_orchestrator.engine.runtime import enqueue
from pao_orchestrator.errors import Conflict, NotFound
from pao_orchestrator.store import RunRecord, StepRow
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import steps as step_store
from pao_orchestrator.vocabulary import RunStatus, TaskStatus, Trigger

Clock = Callable[[], datetime]


async def run_now(db: asyncpg.Pool, caller: Agent, task_id: UUID, *, clock: Clock) -> RunRecord:
    """Enqueue a manual run of a task now; returns the run."""
    now = clock()
    async with db.acquire() as conn, conn.transaction():
        task = await access.task(conn, caller, task_id)
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
        await audit.record(conn, caller, "run_now", "task", task_id, {"run_id": str(run.id), "status": run.status})
    return run


def to_run(row: RunRecord, steps: list[StepRow] | None = None) -> Run:
    return Run.model_validate({**row.as_dict(), "steps": [RunStep.model_validate(s.as_dict()) for s in steps or []]})


def to_summary(row: RunRecord) -> RunSummary:
    return RunSummary.model_validate(row.as_dict())


async def get_run(db: asyncpg.Pool, caller: Agent, run_id: UUID) -> Run:
    """One run with every step of every attempt; another agent's run is "not found" unless caller is admin."""
    async with db.acquire() as conn:
        await access.run(conn, caller, run_id)
        row = await run_store.get(conn, run_id)
        steps = await step_store.of_run(conn, run_id)
    return to_run(row, steps)


async def get_step(db: asyncpg.Pool, caller: Agent, run_id: UUID, step_id: str) -> RunStep:
    """The newest attempt of one step of a run, in full (scoped like get_run)."""
    async with db.acquire() as conn:
        await access.run(conn, caller, run_id)
        await run_store.get(conn, run_id)  # NotFound names the run when it is the run that is missing
        steps = [s for s in await step_store.of_run(conn, run_id) if s.step_id == step_id]
    if not steps:
        raise NotFound(f"run {run_id} has no recorded step {step_id!r} (yet)")
    newest = max(steps, key=lambda s: (s.attempt, s.started_at))
    return RunStep.model_validate(newest.as_dict())


async def list_runs(
    db: asyncpg.Pool, caller: Agent, *, task_id: UUID | None, status: RunStatus | None, limit: int, cursor: str | None
) -> tuple[list[RunSummary], str | None]:
    before = decode_cursor(cursor)
    async with db.acquire() as conn:
        rows = await run_store.list_page(
            conn, task_id=task_id, status=status, before=before, limit=limit + 1, created_by=access.owner_filter(caller)
        )
    rows, next_cursor = page(rows, limit)
    return [to_summary(r) for r in rows], next_cursor


async def cancel_run(db: asyncpg.Pool, caller: Agent, run_id: UUID) -> Run:
    """Cancel a queued run, or stop a running one, its step in flight included (it then ends as `cancelled`)."""
    async with db.acquire() as conn, conn.transaction():
        await access.run(conn, caller, run_id)
        row = await run_store.cancel(conn, run_id, f"cancelled by {caller.name} (cancel_run)")
        await audit.record(conn, caller, "cancel_run", "run", run_id, {"status": row.status})
    return to_run(row)
