"""The MCP tools: thin adapters from a tool call to one engine call.

Each tool authenticates the caller, lets the SDK validate arguments against the
published schema, calls the engine, and returns a pydantic model (structured
content with an output schema). Domain errors become tool errors whose text
says what to fix. Docstrings are the tools' manuals: clients show them to the
model.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from uuid import UUID

from mcp.server.mcpserver import Context
from pydantic import BaseModel, Field, Strict

from pao_orchestrator.engine import MAX_WAIT_SECONDS, Agent, Engine, Run, RunStep, RunSummary, Task, TaskSpec
from pao_orchestrator.server.admin_tools import register_admin_tools
from pao_orchestrator.server.event_tools import register_event_tools
from pao_orchestrator.server.metadata import (
    CANCEL,
    CREATE,
    READ,
    READ_OPEN,
    RUN,
    Cursor,
    Limit,
    RunId,
    TaskId,
    tool_errors,
)
from pao_orchestrator.server.resources import bounded_run
from pao_orchestrator.server.schedule_tools import register_schedule_tools
from pao_orchestrator.server.signatures import model_parameters, with_signature
from pao_orchestrator.server.toolset import ToolSet
from pao_orchestrator.vocabulary import RunStatus, ScheduleKind, StepStatus, TaskStatus


class CreateTaskResult(BaseModel):
    task: Task
    warnings: list[str] = Field(description="What could not be checked before saving (e.g. a server that was down).")


class TaskList(BaseModel):
    tasks: list[Task]
    next_cursor: str | None = Field(description="Pass as cursor to get the next page; null when this is the last.")


class RunNowResult(BaseModel):
    run_id: UUID
    status: RunStatus = Field(description="queued/running if not waited for (or still going); skipped if deduplicated.")
    reason: str | None
    run: Run | None = Field(default=None, description="The run as get_run shows it, when waited for.")


class RunList(BaseModel):
    runs: list[RunSummary]
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


Wait = Annotated[
    float,
    Strict(False),
    Field(ge=0, le=MAX_WAIT_SECONDS, description=f"Seconds to wait for the run to finish, 0..{MAX_WAIT_SECONDS:g}."),
]


@dataclass(frozen=True)
class Reads:
    """The reads the fixed resources share with their tools (the same JSON)."""

    health: Callable[[], Awaitable[Health]]
    downstream: Callable[[], Awaitable[DownstreamTools]]


def register_tools(tools: ToolSet, engine: Engine, caller: Callable[[], Agent]) -> Reads:
    """Register every tool on `tools`, bound to `engine`; `caller` names the agent making the call."""

    async def create_task(**arguments: Any) -> CreateTaskResult:
        """Save a schedule and a pipeline of tool calls; each run executes the pipeline.

        Steps: {id, uses: '<server>.<tool>', with, save_as?, timeout_seconds?}. Checked before saving
        (servers, tools, argument types, templates); errors name the field. Try schedules with
        preview_schedule and pipelines with run_now. DST: a skipped wall time fires after the gap, a
        repeated one fires once."""
        created = await engine.create_task(caller(), arguments)
        return CreateTaskResult(task=created.task, warnings=created.warnings)

    with_signature(create_task, model_parameters(TaskSpec), CreateTaskResult)
    tools.add_tool(tool_errors(create_task), name="create_task", title="Create task", annotations=CREATE)

    @tools.tool(name="get_task", title="Get task", annotations=READ)
    @tool_errors
    async def get_task(task_id: TaskId) -> Task:
        """One task: schedule, pipeline, policies, status, next fire times."""
        return await engine.get_task(caller(), task_id)

    @tools.tool(name="list_tasks", title="List tasks", annotations=READ)
    @tool_errors
    async def list_tasks(
        status: Annotated[TaskStatus | None, Field(description="Only this status.")] = None,
        schedule_kind: Annotated[ScheduleKind | None, Field(description="Only this kind.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> TaskList:
        """Tasks, newest first."""
        tasks, next_cursor = await engine.list_tasks(
            caller(), status=status, schedule_kind=schedule_kind, limit=limit, cursor=cursor
        )
        return TaskList(tasks=tasks, next_cursor=next_cursor)

    @tools.tool(name="run_now", title="Run task now", annotations=RUN)
    @tool_errors
    async def run_now(task_id: TaskId, ctx: Context, wait: Wait = 0) -> RunNowResult:
        """Run a task's pipeline now. With wait, return the finished run (progress: one notification per
        finished step); else return at once. Dedupe applies."""
        who = caller()
        started = await engine.run_now(who, task_id)
        if wait <= 0 or started.status not in (RunStatus.QUEUED, RunStatus.RUNNING):
            return RunNowResult(run_id=started.id, status=started.status, reason=started.reason)

        async def progress(step: RunStep, finished: int, total: int) -> None:
            outcome = "succeeded" if step.status == StepStatus.SUCCEEDED else step.status.value
            await ctx.report_progress(finished, max(total, finished), f"step {step.step_id} {outcome}")

        run = await engine.wait_for_run(who, started.id, timeout=wait, on_step=progress)
        return RunNowResult(run_id=run.id, status=run.status, reason=run.reason, run=bounded_run(run))

    @tools.tool(name="get_run", title="Get run", annotations=READ)
    @tool_errors
    async def get_run(
        run_id: RunId,
        wait_seconds: Annotated[
            float,
            Strict(False),
            Field(ge=0, le=MAX_WAIT_SECONDS, description="Wait up to this long while it is queued or running."),
        ] = 0,
    ) -> Run:
        """One run: status, reason, error, outputs, every step of every attempt. A step input or output
        over 16 KB is cut, naming its pao://runs/{run_id}/steps/{step_id} resource."""
        if wait_seconds > 0:
            return bounded_run(await engine.wait_for_run(caller(), run_id, timeout=wait_seconds))
        return bounded_run(await engine.get_run(caller(), run_id))

    @tools.tool(name="cancel_run", title="Cancel run", annotations=CANCEL)
    @tool_errors
    async def cancel_run(run_id: RunId) -> Run:
        """Cancel a run; a running step is stopped within a second. Idempotent."""
        return await engine.cancel_run(caller(), run_id)

    @tools.tool(name="list_runs", title="List runs", annotations=READ)
    @tool_errors
    async def list_runs(
        task_id: Annotated[UUID | None, Field(description="Only this task's runs.")] = None,
        status: Annotated[RunStatus | None, Field(description="Only this status.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> RunList:
        """Runs, newest first, without steps. Skipped runs say why a fire did not run."""
        runs, next_cursor = await engine.list_runs(caller(), task_id=task_id, status=status, limit=limit, cursor=cursor)
        return RunList(runs=runs, next_cursor=next_cursor)

    @tools.tool(name="list_downstream_tools", title="List downstream tools", annotations=READ_OPEN)
    @tool_errors
    async def list_downstream_tools(
        server: Annotated[str | None, Field(description="Only this server (or 'pao').")] = None,
    ) -> DownstreamTools:
        """What pipeline steps may use: each mcp.json server's tools with schemas, and the pao built-ins.
        Starts the servers."""
        return await downstream(server)

    async def downstream(server: str | None = None) -> DownstreamTools:
        return DownstreamTools.model_validate(await engine.downstream_catalog(server))

    @tools.tool(name="health", title="Health", annotations=READ)
    @tool_errors
    async def health() -> Health:
        """Database reachable, schema version, runs queued and running."""
        return await health_read()

    async def health_read() -> Health:
        return Health.model_validate({"status": "ok", **await engine.health()})

    register_schedule_tools(tools, engine, caller)
    register_event_tools(tools, engine, caller)
    register_admin_tools(tools, engine, caller)
    return Reads(health=health_read, downstream=downstream)
