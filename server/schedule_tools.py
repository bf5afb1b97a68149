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

from mcp.server.mcpserver import MCPServer
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
from pao_orchestrator.server.metadata import CANCEL, READ, STATE, WRITE, TaskId, tool_errors
from pao_orchestrator.server.signatures import with_signature
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


def register_schedule_tools(mcp: MCPServer[Any], engine: Engine, caller: Callable[[], Agent]) -> None:
    """Register update_task, snooze, pause_task, resume_task, cancel_task and preview_schedule."""

    async def update_task(task_id: UUID, **fields: Any) -> TaskChange:
        """Change any field of a task, like create_task takes them; omit (or pass null for) what stays.

        The result is validated exactly as create_task validates: schedule, timezone, pipeline (unknown
        servers or tools, missing arguments), key templates. Nothing is written when anything is wrong.
        Changing schedule_kind, schedule_expr or timezone recomputes the next fire from now (an rrule without
        DTSTART then counts its COUNT from now), withdraws runs created ahead for the old schedule, and brings
        a completed task back to active. Other changes keep the next fire. A cancelled task cannot be updated.
        To remove a dedupe_key or concurrency_key, pass an empty string.

        Returns the task, whether anything changed, a one-line summary, and warnings for what could not be
        checked (a downstream server that was down).
        """
        changes = {name: value for name, value in fields.items() if value is not None}
        return await engine.update_task(caller(), task_id, changes)

    with_signature(update_task, _update_parameters(), TaskChange)
    mcp.add_tool(tool_errors(update_task), name="update_task", annotations=WRITE)

    @mcp.tool(name="snooze", annotations=WRITE)
    @tool_errors
    async def snooze(
        task_id: TaskId,
        seconds: Annotated[
            float | None,
            Strict(),
            Field(gt=0, le=366 * 86_400, allow_inf_nan=False, description="Snooze for this many seconds from now."),
        ] = None,
        until: Annotated[
            str | None,
            Field(description="Snooze until this ISO 8601 instant, with its offset: '2026-03-30T08:00:00+03:00'."),
        ] = None,
    ) -> TaskChange:
        """Hold a task's fires until an instant; after it the schedule resumes by itself.

        Give exactly one of `seconds` or `until`. No fire happens before the snooze ends; the first fire it
        holds back is recorded as a skipped run ("snoozed until ..."), so list_runs explains the silence.
        A new snooze replaces the previous one (it may shorten it); resume_task ends a snooze at once.
        Only an active task can be snoozed: a paused, completed or cancelled one is an error.
        Returns the task with next_fires counted from the end of the snooze.
        """
        return await engine.snooze(caller(), task_id, seconds=seconds, until=until)

    @mcp.tool(name="pause_task", annotations=STATE)
    @tool_errors
    async def pause_task(task_id: TaskId) -> TaskChange:
        """Stop a task from firing until resume_task. Runs already queued or running are not touched
        (cancel_run or cancel_task stop those). Pausing a paused task changes nothing (changed=false).
        A completed or cancelled task cannot be paused."""
        return await engine.pause_task(caller(), task_id)

    @mcp.tool(name="resume_task", annotations=STATE)
    @tool_errors
    async def resume_task(task_id: TaskId) -> TaskChange:
        """Make a paused (or snoozed) task fire again, from now on.

        The fires that fell in the pause are not run — no storm of old fires — and one skipped run records
        how many there were and when. The misfire policy still governs fires missed while no scheduler ran.
        A task paused by pause_after_failures counts its failures afresh from now; paused_reason is cleared.
        Resuming an active, unsnoozed task changes nothing. A completed task needs a new schedule
        (update_task); a cancelled one cannot come back.
        """
        return await engine.resume_task(caller(), task_id)

    @mcp.tool(name="cancel_task", annotations=CANCEL)
    @tool_errors
    async def cancel_task(
        task_id: TaskId,
        stop_running: Annotated[
            bool,
            Strict(),
            Field(description="Also ask running runs to stop before their next step (false: let them finish)."),
        ] = True,
    ) -> CancelledTask:
        """Cancel a task for good: it never fires again and cannot be resumed or updated.

        Its queued runs are cancelled; its running runs stop before their next step (the step in flight
        finishes) unless stop_running is false. Finished runs stay as they are, readable with list_runs.
        Cancelling a cancelled task changes nothing. Returns the ids of the runs cancelled and stopping.
        """
        return await engine.cancel_task(caller(), task_id, stop_running=stop_running)

    @mcp.tool(name="preview_schedule", annotations=READ)
    @tool_errors
    async def preview_schedule(
        schedule_kind: ScheduleKind,
        schedule_expr: Annotated[str, Field(min_length=1, max_length=4096)],
        timezone: Annotated[str, Field(description="IANA timezone the schedule is read in.")] = DEFAULT_TIMEZONE,
        count: Annotated[int, Strict(), Field(ge=1, le=MAX_PREVIEW, description="How many fires to list.")] = 5,
        after: Annotated[
            str | None, Field(description="List fires strictly after this ISO 8601 instant (with offset); default now.")
        ] = None,
    ) -> SchedulePreview:
        """Show when a schedule would fire, before saving it with create_task or update_task.

        Same kinds and syntax as create_task (cron with 5 or 6 fields, rrule, once; event and condition are
        explained in `note`). Returns each fire as ISO 8601 in `timezone` with its offset ('at'), in UTC, and
        as text for people ('Mon 30 Mar 2026 08:30:00 EEST'), so you can tell the user "next: Mon 08:30 EEST".
        Daylight saving is applied exactly as when the task runs: a wall time that does not exist (spring
        forward) fires at the same offset after the gap, one that happens twice fires once, the first time.
        An invalid expression or timezone is an error naming the bad part.
        """
        return await engine.preview_schedule(schedule_kind, schedule_expr, timezone, count=count, after=after)
