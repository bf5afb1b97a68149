"""Tasks, runs and steps as MCP resources, and the fixed `pao://health` and `pao://downstream`.

A resource reads as the same JSON as the matching tool (`pao://runs/{id}` is
get_run's structured content, truncated steps included); a step's resource has
its full input and output. `resources/list` pages through tasks, newest first,
after the fixed resources.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any
from uuid import UUID

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp_types import ListResourcesResult, Resource
from pydantic import BaseModel

from pao_orchestrator.engine import Agent, Engine, Run, RunStep
from pao_orchestrator.errors import InvalidArgument, NotFound, PaoError
from pao_orchestrator.server.auth import resource_scope
from pao_orchestrator.vocabulary import Scope

JSON = "application/json"
TASK_URI = "pao://tasks/{task_id}"
RUN_URI = "pao://runs/{run_id}"
STEP_URI = "pao://runs/{run_id}/steps/{step_id}"
EVENT_URI = "pao://events/{event_id}"
HEALTH_URI = "pao://health"
DOWNSTREAM_URI = "pao://downstream"
LIST_PAGE = 50
MAX_STEP_VALUE = 16 * 1024
"""get_run shows a step's input or output up to this many characters of JSON; the step's resource has all."""


def task_uri(task_id: UUID | str) -> str:
    return f"pao://tasks/{task_id}"


def run_uri(run_id: UUID | str) -> str:
    return f"pao://runs/{run_id}"


def step_uri(run_id: UUID | str, step_id: str) -> str:
    return f"pao://runs/{run_id}/steps/{step_id}"


def compact(value: Any) -> str:
    """JSON as tools' text blocks and resources carry it: no indentation, no spaces."""
    if isinstance(value, BaseModel):
        value = value.model_dump(mode="json", by_alias=True)
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _bounded(value: Any, uri: str) -> Any:
    if value is None:
        return None
    size = len(compact(value))
    if size <= MAX_STEP_VALUE:
        return value
    return {"truncated": f"{size:,} characters of JSON, over get_run's {MAX_STEP_VALUE:,}; read {uri} for all"}


def bounded_run(run: Run) -> Run:
    """The run as get_run shows it: each step's input and output over MAX_STEP_VALUE replaced by a marker
    naming the step's resource."""
    steps: list[RunStep] = []
    for step in run.steps:
        uri = step_uri(run.id, step.step_id)
        steps.append(step.model_copy(update={"input": _bounded(step.input, uri), "output": _bounded(step.output, uri)}))
    return run.model_copy(update={"steps": steps})


async def _read(read: Callable[[], Awaitable[Any]]) -> str:
    try:
        return compact(await read())
    except (NotFound, InvalidArgument) as exc:
        raise ResourceNotFoundError(str(exc)) from exc
    except PaoError as exc:
        raise ResourceError(str(exc)) from exc


def _uuid(value: str, what: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise ResourceNotFoundError(f"{what} {value!r} is not a UUID") from None


def register_resources(
    mcp: MCPServer[Any],
    engine: Engine,
    caller: Callable[[], Agent],
    health: Callable[[], Awaitable[BaseModel]],
    downstream: Callable[[], Awaitable[BaseModel]],
) -> None:
    """Register the resource templates and the fixed resources; `health`/`downstream` are the tools' own reads."""

    @mcp.resource(TASK_URI, name="task", title="Task", mime_type=JSON, description="A task, as get_task returns it.")
    async def task(task_id: str) -> str:
        return await _read(lambda: engine.get_task(caller(), _uuid(task_id, "task_id")))

    @mcp.resource(RUN_URI, name="run", title="Run", mime_type=JSON, description="A run, as get_run returns it.")
    async def run(run_id: str) -> str:
        async def read() -> Run:
            return bounded_run(await engine.get_run(caller(), _uuid(run_id, "run_id")))

        return await _read(read)

    @mcp.resource(
        STEP_URI,
        name="run_step",
        title="Run step",
        mime_type=JSON,
        description="The newest attempt of one step of a run, with its full input and output.",
    )
    async def step(run_id: str, step_id: str) -> str:
        return await _read(lambda: engine.get_step(caller(), _uuid(run_id, "run_id"), step_id))

    @mcp.resource(EVENT_URI, name="event", title="Event", mime_type=JSON, description="As get_event returns it.")
    async def event(event_id: str) -> str:
        if not event_id.isdigit():
            raise ResourceNotFoundError(f"event_id {event_id!r} is not an event id")
        return await _read(lambda: engine.get_event(caller(), int(event_id)))

    @mcp.resource(HEALTH_URI, name="health", title="Health", mime_type=JSON, description="As the health tool.")
    async def health_resource() -> str:
        return await _read(health)

    @mcp.resource(
        DOWNSTREAM_URI,
        name="downstream",
        title="Downstream tools",
        mime_type=JSON,
        description="What pipeline steps may use, as list_downstream_tools.",
    )
    async def downstream_resource() -> str:
        return await _read(downstream)


async def list_resources_page(
    engine: Engine, caller: Agent, cursor: str | None, fixed: list[Resource]
) -> ListResourcesResult:
    """One page of `resources/list`: the fixed resources first, then tasks newest first (for an agent
    that may read tasks); each only for an agent that may read it."""
    fixed = [r for r in fixed if (needed := resource_scope(str(r.uri))) is None or caller.can(needed)]
    if not caller.can(Scope.TASKS_READ):
        return ListResourcesResult(resources=fixed if cursor is None else [], next_cursor=None)
    try:
        tasks, next_cursor = await engine.list_tasks(caller, limit=LIST_PAGE, cursor=cursor)
    except PaoError as exc:
        raise ResourceError(str(exc)) from exc
    listed = [
        Resource(
            uri=task_uri(t.id),
            name=f"task-{t.id}",
            title=t.title,
            description=f"{t.schedule_kind} '{t.schedule_expr}' ({t.timezone}), {t.status}",
            mime_type=JSON,
        )
        for t in tasks
    ]
    return ListResourcesResult(resources=(fixed if cursor is None else []) + listed, next_cursor=next_cursor)


def visibility(engine: Engine, caller: Callable[[], Agent]) -> Callable[[str], Awaitable[None]]:
    """A check that the caller may read the task or run a `pao://` URI names (ResourceNotFoundError, the same
    as for one that does not exist, when not); other URIs pass (a subscription to them never fires)."""

    async def visible(uri: str) -> None:
        parts = uri.removeprefix("pao://").split("/")
        if not uri.startswith("pao://") or len(parts) < 2:
            return
        if parts[0] == "tasks":
            await _read(lambda: engine.get_task(caller(), _uuid(parts[1], "task_id")))
        elif parts[0] == "runs":
            await _read(lambda: engine.get_run(caller(), _uuid(parts[1], "run_id")))

    return visible
