"""Creating a run: the trigger view templates read, the rendered keys, and the dedupe rule."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final, Protocol
from uuid import UUID

import asyncpg

from pao_orchestrator.engine.runtime import storable
from pao_orchestrator.engine.templating import TemplateError, needs_isolation, render
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


MAX_KEY_LENGTH: Final = 1000
"""The longest rendered key: keys are indexed, and a btree entry has a size limit."""


@dataclass(frozen=True)
class Keys:
    """A run's rendered dedupe and concurrency keys."""

    dedupe: str | None
    concurrency: str | None


def render_key(template: str | None, context: dict[str, Any], field: str) -> str | None:
    """A dedupe or concurrency key rendered from its template (None when there is none).

    Keys are rendered while runs are created (in a scheduler pass, in run_now), so only simple
    templates are rendered (the save-time check enforces it; a task stored before it was is refused
    here), and the result must be storable text of at most MAX_KEY_LENGTH characters. Anything
    else raises TemplateError naming the field.
    """
    if template is None:
        return None
    if needs_isolation(template):
        raise TemplateError(
            f"{field}: {template!r} is not a simple template (keys may read values, with cheap filters "
            "and conditions); update_task with a simpler key"
        )
    value = render(template, context, field=field, limit=MAX_KEY_LENGTH)
    if value is None:
        return None
    text = str(value)
    problem = storable.problem(text, MAX_KEY_LENGTH, limit_name=None)
    if problem is not None:
        raise TemplateError(f"{field}: {template!r} rendered a key that {problem}")
    return text


def render_keys(
    task: RunSource,
    trigger: Trigger,
    trigger_data: dict[str, Any],
    scheduled_for: datetime,
    *,
    default_concurrency_key: str | None = None,
) -> Keys:
    """The keys a run of `task` fired by `trigger` at `scheduled_for` gets; TemplateError if one cannot be rendered."""
    if task.concurrency_key is None and task.dedupe_key is None:
        return Keys(None, default_concurrency_key)  # the usual case: nothing to render
    context = key_context(task, trigger, trigger_data, scheduled_for)
    concurrency = (
        render_key(task.concurrency_key, context, "concurrency_key")
        if task.concurrency_key
        else default_concurrency_key
    )
    return Keys(render_key(task.dedupe_key, context, "dedupe_key"), concurrency)


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
    keys: Keys | None = None,
    event_id: int | None = None,
) -> RunRecord:
    """Insert a queued run for `task`, applying its dedupe rule; the caller owns the transaction.

    A run whose rendered dedupe key matches a run of the same task inside the
    dedupe window is recorded as `skipped`, pointing at the original
    (`deduped_of`), and never executes. A window of 0 means "while the original
    is still queued or running". `default_concurrency_key` applies when the task
    has no concurrency_key of its own; `keys`, when given, were rendered already.
    A key that cannot be rendered raises TemplateError before anything is written.
    """
    if keys is None:
        keys = render_keys(task, trigger, trigger_data, scheduled_for, default_concurrency_key=default_concurrency_key)
    dedupe_key, concurrency_key = keys.dedupe, keys.concurrency
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
            event_id=event_id,
        ),
    )
