"""Creating a run: the trigger view templates read, the rendered keys, and the dedupe rule."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol
from uuid import UUID

import asyncpg

from pao_orchestrator.engine.templating import render
from pao_orchestrator.store import NewRun, RunRecord
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.vocabulary import OverlapPolicy, RunStatus, Trigger


class RunSource(Protocol):
    """What creating a run needs of its task (a stored task, or one a scheduler pass locked)."""

    @property
    def id(self) -> UUID: ...
    @property
    def title(self) -> str: ...
    @property
    def priority(self) -> int: ...
    @property
    def max_retries(self) -> int: ...
    @property
    def dedupe_key(self) -> str | None: ...
    @property
    def dedupe_window_seconds(self) -> int: ...
    @property
    def concurrency_key(self) -> str | None: ...


def trigger_view(kind: Trigger, scheduled_for: datetime, trigger_data: dict[str, Any]) -> dict[str, Any]:
    """`${trigger...}` in templates: what fired the run, when it was due, and the trigger's own data."""
    return {"kind": kind.value, "scheduled_for": scheduled_for.isoformat(), **trigger_data}


def key_context(
    task: RunSource, trigger: Trigger, trigger_data: dict[str, Any], scheduled_for: datetime
) -> dict[str, Any]:
    """What `dedupe_key` and `concurrency_key` templates may read: the trigger, not step outputs."""
    return {
        "trigger": trigger_view(trigger, scheduled_for, trigger_data),
        "event": trigger_data.get("event", {}),
        "task": {"id": str(task.id), "title": task.title},
        "now": scheduled_for.isoformat(),
    }


def render_key(template: str | None, context: dict[str, Any]) -> str | None:
    """A dedupe or concurrency key rendered from its template (None when there is none)."""
    if template is None:
        return None
    value = render(template, context)
    return None if value is None else str(value)


def serial_key(task_id: UUID, overlap_policy: OverlapPolicy) -> str | None:
    """The concurrency key that keeps a task's scheduled runs from overlapping, unless allowed."""
    return None if overlap_policy == OverlapPolicy.ALLOW else f"task:{task_id}"


async def enqueue(
    conn: asyncpg.Connection,
    task: RunSource,
    *,
    trigger: Trigger,
    trigger_data: dict[str, Any],
    scheduled_for: datetime,
    created_by: UUID | None,
    default_concurrency_key: str | None = None,
) -> RunRecord:
    """Insert a queued run for `task`, applying its dedupe rule; the caller owns the transaction.

    A run whose rendered dedupe key matches a run of the same task inside the
    dedupe window is recorded as `skipped`, pointing at the original
    (`deduped_of`), and never executes. A window of 0 means "while the original
    is still queued or running". `default_concurrency_key` applies when the task
    has no concurrency_key of its own.
    """
    context = key_context(task, trigger, trigger_data, scheduled_for)
    dedupe_key = render_key(task.dedupe_key, context)
    concurrency_key = render_key(task.concurrency_key, context) if task.concurrency_key else default_concurrency_key
    status = RunStatus.QUEUED
    reason: str | None = None
    deduped_of: UUID | None = None
    if dedupe_key is not None:
        await run_store.lock_dedupe_key(conn, task.id, dedupe_key)
        deduped_of = await run_store.find_duplicate(conn, task.id, dedupe_key, task.dedupe_window_seconds)
        if deduped_of is not None:
            status = RunStatus.SKIPPED
            reason = f"deduplicated: run {deduped_of} has the same dedupe_key {dedupe_key!r}"
    return await run_store.insert(
        conn,
        NewRun(
            task_id=task.id,
            status=status,
            trigger=trigger,
            trigger_data=trigger_data,
            scheduled_for=scheduled_for,
            priority=task.priority,
            concurrency_key=concurrency_key,
            dedupe_key=dedupe_key,
            deduped_of=deduped_of,
            max_attempts=task.max_retries + 1,
            available_at=scheduled_for,
            reason=reason,
            created_by=created_by,
        ),
    )
