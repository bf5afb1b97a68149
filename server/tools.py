"""The MCP tools: thin adapters from a tool call to one engine call.

Each tool authenticates the caller, lets the SDK validate arguments against the
published schema, calls the engine, and returns a pydantic model (structured
content with an output schema). Domain errors become tool errors whose text
says what to fix. Docstrings are the tools' manuals: clients show them to the
model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Literal
from uuid import UUID

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field

from pao_orchestrator.engine import Agent, Engine, Run, Task, TaskSpec
from pao_orchestrator.server.event_tools import register_event_tools
from pao_orchestrator.server.metadata import CANCEL, READ, WRITE, Cursor, Limit, RunId, TaskId, tool_errors
from pao_orchestrator.server.schedule_tools import register_schedule_tools
from pao_orchestrator.server.signatures import model_parameters, with_signature
from pao_orchestrator.vocabulary import RunStatus, ScheduleKind, TaskStatus


class CreateTaskResult(BaseModel):
    task: Task
    warnings: list[str] = Field(description="What could not be checked before saving (e.g. a server that was down).")


class TaskList(BaseModel):
    tasks: list[Task]
    next_cursor: str | None = Field(description="Pass as cursor to get the next page; null when this is the last.")


class RunNowResult(BaseModel):
    run_id: UUID
    status: RunStatus = Field(description="'queued', or 'skipped' when the task's dedupe rule suppressed it.")
    reason: str | None


class RunList(BaseModel):
    runs: list[Run]
    next_cursor: str | None


class DownstreamTool(BaseModel):
    uses: str = Field(description="What a pipeline step writes in 'uses': '<server>.<tool>'.")
    description: str | None
    input_schema: dict[str, Any]
    output_schema: dict[str, Any] | None


class DownstreamServer(BaseModel):
    name: str
    status: Literal["ok", "error"]
    error: str | None = None
    tools: list[DownstreamTool]


class DownstreamTools(BaseModel):
    servers: list[DownstreamServer]


class Health(BaseModel):
    status: Literal["ok"]
    database: str
    schema_version: int | None
    queued_due: int
    running: int
    worker: str | None
    downstream_servers: list[str]
    relay: dict[str, Any] = Field(description="Redis bridge: events waiting in the outbox, oldest age (s).")


def register_tools(mcp: MCPServer[Any], engine: Engine, caller: Callable[[], Agent]) -> None:
    """Register every tool on `mcp`, bound to `engine`; `caller` names the agent making the call."""

    async def create_task(**arguments: Any) -> CreateTaskResult:
        """Create a scheduled task: a schedule plus a pipeline of tool calls that each run executes.

        schedule_kind / schedule_expr:
          - cron: 5 fields 'min hour dom month dow' (e.g. '30 8 * * 1-5'), or 6 fields with seconds first
            ('*/10 * * * * *'); evaluated in `timezone`.
          - rrule: RFC 5545, e.g. 'FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=8;BYMINUTE=30', optionally with a
            'DTSTART;TZID=...:YYYYMMDDTHHMMSS' line; COUNT and UNTIL are honoured.
          - once: an ISO 8601 instant ('2026-12-01T08:30:00+02:00') or a local date-time read in `timezone`.
          - event: a topic pattern ('email.received', 'home.*', '*'), optional `filter` ('${event.data.x == 1}');
            steps read ${event.id}, ${event.topic}, ${event.data...}, ${event.source}.
          - condition: a poll interval ('PT1M'), a `probe` step and a `when` over ${probe...}; runs when `when`
            turns true; steps read ${condition.result}.
        Wall-clock times that do not exist (spring forward) fire at the same offset after the gap; times that
        occur twice (fall back) fire once, at the first occurrence. Use preview_schedule to check first.

        payload: {"pipeline": [step, ...]}. Each step is {"id", "uses": "<server>.<tool>", "with": {...},
        "save_as"?, "timeout_seconds"?}. 'uses' names a server from mcp.json (see list_downstream_tools) or a
        built-in: pao.noop, pao.sleep, pao.publish_event. Values in 'with' may use templates:
        '${steps.<id>.<field>}' reads an earlier step's output, '${<save_as>}' a saved value,
        '${trigger.scheduled_for}', '${event.data...}', '${task.title}', '${run.id}', '${now}',
        '${secrets.NAME}' (from the orchestrator's PAO_SECRET_NAME). A value that is exactly one '${...}' keeps
        its type (number, object, list). The pipeline is checked before saving: unknown servers, tools, missing
        arguments and references to later steps are rejected.

        priority 1 (most urgent) .. 9; dedupe_key (template) with dedupe_window_seconds (0: suppress a run while
        another with the same key is queued or running); max_retries and backoff_strategy for failed steps;
        concurrency_key (template): runs with equal keys never overlap; misfire_policy (after downtime: skip,
        run_once, catch_up) and overlap_policy (when a fire arrives while the previous run is active: skip,
        queue, cancel_previous, allow).

        Returns the stored task with its next fire times, and warnings for anything that could not be checked.
        """
        created = await engine.create_task(caller(), arguments)
        return CreateTaskResult(task=created.task, warnings=created.warnings)

    with_signature(create_task, model_parameters(TaskSpec), CreateTaskResult)
    mcp.add_tool(tool_errors(create_task), name="create_task", annotations=WRITE)

    @mcp.tool(name="get_task", annotations=READ)
    @tool_errors
    async def get_task(task_id: TaskId) -> Task:
        """Get one task: its schedule, pipeline, policies, status and next fire times (in its timezone)."""
        return await engine.get_task(task_id)

    @mcp.tool(name="list_tasks", annotations=READ)
    @tool_errors
    async def list_tasks(
        status: TaskStatus | None = None,
        schedule_kind: ScheduleKind | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> TaskList:
        """List tasks, newest first, optionally filtered by status (active, paused, completed, cancelled)
        and schedule_kind. Pages with next_cursor."""
        tasks, next_cursor = await engine.list_tasks(
            status=status, schedule_kind=schedule_kind, limit=limit, cursor=cursor
        )
        return TaskList(tasks=tasks, next_cursor=next_cursor)

    @mcp.tool(name="run_now", annotations=WRITE)
    @tool_errors
    async def run_now(task_id: TaskId) -> RunNowResult:
        """Run a task's pipeline now, outside its schedule. Returns at once with the new run's id; follow it
        with get_run. The task's dedupe rule applies: a duplicate is recorded as 'skipped' with the reason."""
        run = await engine.run_now(caller(), task_id)
        return RunNowResult(run_id=run.id, status=run.status, reason=run.reason)

    @mcp.tool(name="get_run", annotations=READ)
    @tool_errors
    async def get_run(run_id: RunId) -> Run:
        """Get one run: status (queued, running, succeeded, failed, cancelled, skipped), why (reason, error),
        attempts, the values saved with save_as (outputs), and every step of every attempt with its rendered
        input, output, error and duration. Secrets are shown as ***."""
        return await engine.get_run(run_id)

    @mcp.tool(name="cancel_run", annotations=CANCEL)
    @tool_errors
    async def cancel_run(run_id: RunId) -> Run:
        """Cancel a run. A queued run is cancelled at once; a running one stops before its next step and ends
        as 'cancelled' (the step in flight finishes). A finished run is returned unchanged. Idempotent."""
        return await engine.cancel_run(caller(), run_id)

    @mcp.tool(name="list_runs", annotations=READ)
    @tool_errors
    async def list_runs(
        task_id: Annotated[UUID | None, Field(description="Only runs of this task.")] = None,
        status: RunStatus | None = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> RunList:
        """List runs, newest first (without their steps; get_run has them). Skipped runs carry the reason a
        fire did not execute (missed, overlapping, deduplicated), so this answers "why didn't it run?"."""
        runs, next_cursor = await engine.list_runs(task_id=task_id, status=status, limit=limit, cursor=cursor)
        return RunList(runs=runs, next_cursor=next_cursor)

    @mcp.tool(name="list_downstream_tools", annotations=READ)
    @tool_errors
    async def list_downstream_tools(
        server: Annotated[str | None, Field(description="Only this server from mcp.json (or 'pao').")] = None,
    ) -> DownstreamTools:
        """List what pipeline steps may 'use': every tool of every server in mcp.json, with input and output
        schemas, plus the built-in 'pao' steps. A server that cannot start is listed with its error."""
        return DownstreamTools.model_validate(await engine.downstream_catalog(server))

    @mcp.tool(name="health", annotations=READ)
    @tool_errors
    async def health() -> Health:
        """Check that the orchestrator is up: database reachable, schema version, runs queued and running."""
        return Health.model_validate({"status": "ok", **await engine.health()})

    register_schedule_tools(mcp, engine, caller)
    register_event_tools(mcp, engine, caller)
