"""The MCP tools of a task's life after create_task, and preview_schedule.

Thin adapters like server/tools.py: each authenticates the caller (through
`caller`), lets the SDK validate arguments against the published schema, makes
one engine call and returns a pydantic model (structured content).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from pydantic import Field, Strict

from pao_orchestrator.engine import (
    DEFAULT_TIMEZONE,
    MAX_PREVIEW,
    Agent,
    CancelledTask,
    Engine,
    SchedulePreview,
    TaskChange,
    TaskSpec,
)
from pao_orchestrator.server.metadata import CANCEL, OVERWRITE, READ, STATE, WRITE, TaskId, tool_errors
from pao_orchestrator.server.signatures import with_signature
from pao_orchestrator.server.toolset import ToolSet, types_only
from pao_orchestrator.vocabulary import ScheduleKind


def _update_parameters() -> list[inspect.Parameter]:
    """task_id, then every create_task field as optional (omitted or null: unchanged), same constraints."""
    params = [inspect.Parameter("task_id", inspect.Parameter.KEYWORD_ONLY, annotation=TaskId)]
    for name, info in TaskSpec.model_fields.items():
        base: Any = Annotated[info.annotation, *info.metadata] if info.metadata else info.annotation
        annotation = base | None
        described = Annotated[annotation, Field(description=info.description)] if info.description else annotation
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=described))
    return params


def register_schedule_tools(tools: ToolSet, engine: Engine, caller: Callable[[], Agent]) -> None:
    """Register update_task, snooze, pause_task, resume_task, cancel_task and preview_schedule."""

    async def update_task(task_id: UUID, **fields: Any) -> TaskChange:
        """Change fields of a task (each as create_task describes it); omitted fields stay. Validated as
        create_task; nothing is written on error. A new schedule counts from now. '' removes a dedupe_key or
        concurrency_key."""
        changes = {name: value for name, value in fields.items() if value is not None}
        return await engine.update_task(caller(), task_id, changes)

    with_signature(update_task, _update_parameters(), TaskChange)
    tools.add_tool(
        tool_errors(update_task),
        name="update_task",
        title="Update task",
        annotations=OVERWRITE,
        publish=types_only(frozenset({"task_id"})),
    )

    @tools.tool(name="snooze", title="Snooze task", annotations=WRITE)
    @tool_errors
    async def snooze(
        task_id: TaskId,
        seconds: Annotated[
            float | None,
            Strict(),
            Field(gt=0, le=366 * 86_400, allow_inf_nan=False, description="From now."),
        ] = None,
        until: Annotated[
            str | None,
            Field(description="ISO 8601 instant with offset."),
        ] = None,
    ) -> TaskChange:
        """Hold a task's fires until an instant (give seconds or until); the first held fire is
        recorded as skipped. Replaces an earlier snooze; resume_task ends it."""
        return await engine.snooze(caller(), task_id, seconds=seconds, until=until)

    @tools.tool(name="pause_task", title="Pause task", annotations=STATE)
    @tool_errors
    async def pause_task(task_id: TaskId) -> TaskChange:
        """Stop a task firing until resume_task; runs already queued or running continue."""
        return await engine.pause_task(caller(), task_id)

    @tools.tool(name="resume_task", title="Resume task", annotations=STATE)
    @tool_errors
    async def resume_task(task_id: TaskId) -> TaskChange:
        """Fire a paused or snoozed task again from now; fires missed meanwhile are one skipped run.
        A pause_after_failures count starts afresh."""
        return await engine.resume_task(caller(), task_id)

    @tools.tool(name="cancel_task", title="Cancel task", annotations=CANCEL)
    @tool_errors
    async def cancel_task(
        task_id: TaskId,
        stop_running: Annotated[
            bool,
            Strict(),
            Field(description="Also stop its running runs."),
        ] = True,
    ) -> CancelledTask:
        """Cancel a task for good; its queued runs are cancelled and running ones stopped."""
        return await engine.cancel_task(caller(), task_id, stop_running=stop_running)

    @tools.tool(name="preview_schedule", title="Preview schedule", annotations=READ)
    @tool_errors
    async def preview_schedule(
        schedule_kind: Annotated[ScheduleKind, Field(description="As create_task.")],
        schedule_expr: Annotated[str, Field(min_length=1, max_length=4096, description="As create_task.")],
        timezone: Annotated[str, Field(description="IANA zone.")] = DEFAULT_TIMEZONE,
        count: Annotated[int, Strict(), Field(ge=1, le=MAX_PREVIEW, description="How many fires.")] = 5,
        after: Annotated[str | None, Field(description="ISO 8601 instant; default now.")] = None,
    ) -> SchedulePreview:
        """The next fires of a schedule (ISO 8601 with offset, UTC, and text), before saving it."""
        return await engine.preview_schedule(schedule_kind, schedule_expr, timezone, count=count, after=after)
