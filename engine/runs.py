"""Enqueueing runs and reading them back."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pao_orchestrator.engine.models import Agent, Run, RunStep
from pao_orchestrator.engine.paging import decode_cursor, page
from pao_orchestrator.engine.templating import render as templates
from pao_orchestrator.errors import Conflict
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import tasks as task_store

Clock = Callable[[], datetime]


def trigger_view(kind: str, scheduled_for: datetime, trigger_data: dict[str, Any]) -> dict[str, Any]:
    """`${trigger...}` in templates: what fired the run, when it was due, and the trigger's own data."""
    return {"kind": kind, "scheduled_for": scheduled_for.isoformat(), **trigger_data}


def key_context(
    task: dict[str, Any], trigger: str, trigger_data: dict[str, Any], scheduled_for: datetime
) -> dict[str, Any]:
    """What `dedupe_key` and `concurrency_key` templates may read: the trigger, not step outputs."""
    return {
        "trigger": trigger_view(trigger, scheduled_for, trigger_data),
        "event": trigger_data.get("event", {}),
        "task": {"id": str(task["id"]), "title": task["title"]},
        "now": scheduled_for.isoformat(),
    }


def _render_key(template: str | None, context: dict[str, Any]) -> str | None:
    if template is None:
        return None
    value = templates.render(template, context)
    return None if value is None else str(value)


async def enqueue(
    conn: asyncpg.Connection,
    task: dict[str, Any],
    *,
    trigger: str,
    trigger_data: dict[str, Any],
    scheduled_for: datetime,
    created_by: UUID | None,
    status: str = "queued",
    reason: str | None = None,
) -> dict[str, Any]:
    """Insert a run for `task`, applying its dedupe rule; the caller owns the transaction.

    A run whose rendered dedupe key matches a run of the same task inside the
    dedupe window is recorded as `skipped`, pointing at the original
    (`deduped_of`), and never executes. A window of 0 means "while the original
    is still queued or running".
    """
    context = key_context(task, trigger, trigger_data, scheduled_for)
    dedupe_key = _render_key(task["dedupe_key"], context)
    concurrency_key = _render_key(task["concurrency_key"], context)
    deduped_of: UUID | None = None
    if dedupe_key is not None and status == "queued":
        # Serialise enqueues of one (task, key) so two concurrent triggers cannot both pass the check.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))", f"{task['id']}:{dedupe_key}")
        deduped_of = await run_store.find_duplicate(conn, task["id"], dedupe_key, task["dedupe_window_seconds"])
        if deduped_of is not None:
            status = "skipped"
            reason = f"deduplicated: run {deduped_of} has the same dedupe_key {dedupe_key!r}"
    return await run_store.insert(
        conn,
        task_id=task["id"],
        status=status,
        trigger=trigger,
        trigger_data=trigger_data,
        scheduled_for=scheduled_for,
        priority=task["priority"],
        concurrency_key=concurrency_key,
        dedupe_key=dedupe_key,
        deduped_of=deduped_of,
        max_attempts=task["max_retries"] + 1,
        available_at=scheduled_for,
        reason=reason,
        created_by=created_by,
    )


async def run_now(db: asyncpg.Pool, caller: Agent, task_id: UUID, *, clock: Clock) -> dict[str, Any]:
    """Enqueue a manual run of a task now; returns the run row."""
    now = clock()
    async with db.acquire() as conn, conn.transaction():
        task = await task_store.get(conn, task_id)
        if task["status"] == "cancelled":
            raise Conflict(f"task {task_id} is cancelled; create a new task instead")
        run = await enqueue(
            conn,
            task,
            trigger="manual",
            trigger_data={"by": caller.name},
            scheduled_for=now,
            created_by=caller.id,
        )
        await agent_store.audit(
            conn,
            agent_id=caller.id,
            action="run_now",
            target_type="task",
            target_id=str(task_id),
            details={"run_id": str(run["id"]), "status": run["status"]},
        )
    return run


def to_run(row: dict[str, Any], steps: list[dict[str, Any]] | None = None) -> Run:
    return Run.model_validate({**row, "steps": [RunStep.model_validate(s) for s in steps or []]})


async def get_run(db: asyncpg.Pool, run_id: UUID) -> Run:
    async with db.acquire() as conn:
        row = await run_store.get(conn, run_id)
        steps = await run_store.steps(conn, run_id)
    return to_run(row, steps)


async def list_runs(
    db: asyncpg.Pool, *, task_id: UUID | None, status: str | None, limit: int, cursor: str | None
) -> tuple[list[Run], str | None]:
    before = decode_cursor(cursor)
    async with db.acquire() as conn:
        rows = await run_store.list_page(conn, task_id=task_id, status=status, before=before, limit=limit + 1)
    rows, next_cursor = page(rows, limit)
    return [to_run(r) for r in rows], next_cursor


async def cancel_run(db: asyncpg.Pool, caller: Agent, run_id: UUID) -> Run:
    """Cancel a queued run, or stop a running one between steps (it then ends as `cancelled`)."""
    async with db.acquire() as conn, conn.transaction():
        row = await run_store.cancel(conn, run_id, f"cancelled by {caller.name} (cancel_run)")
        await agent_store.audit(
            conn,
            agent_id=caller.id,
            action="cancel_run",
            target_type="run",
            target_id=str(run_id),
            details={"status": row["status"]},
        )
    return to_run(row)
