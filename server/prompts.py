"""Prompts an MCP client can offer its user: scheduling a pipeline, and explaining a run."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any
from uuid import UUID

from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.server.mcpserver import MCPServer
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_PARAMS
from pydantic import Field

from pao_orchestrator.engine import Agent, Engine
from pao_orchestrator.errors import PaoError
from pao_orchestrator.server.resources import bounded_run, compact, run_uri, step_uri


def register_prompts(mcp: MCPServer[Any], engine: Engine, caller: Callable[[], Agent]) -> None:
    @mcp.prompt(name="schedule_pipeline", title="Schedule a pipeline")
    def schedule_pipeline(
        goal: Annotated[str, Field(description="What should happen, and when, in the user's words.")],
        timezone: Annotated[str, Field(description="The user's IANA timezone.")] = "Europe/Chisinau",
    ) -> str:
        """Turn a goal into a checked, scheduled pipeline, and try it once."""
        return (
            f"Goal: {goal}\nUser's timezone: {timezone}\n\n"
            "Schedule this with the pao tools, in this order:\n"
            "1. list_downstream_tools: find the tools the pipeline needs; note each one's required arguments "
            "and types from its input_schema.\n"
            "2. preview_schedule: try the schedule (cron, rrule or once) in the user's timezone and check "
            "the next fires are what the user meant; show them.\n"
            '3. create_task: the title, the schedule you previewed, and payload {"pipeline": [...]}, each step '
            "{id, uses: '<server>.<tool>', with: {...}, save_as?}; pass values between steps with "
            "${steps.<id>.<field>}. Fix any error it names and call it again.\n"
            "4. run_now with wait=30: run it once and check every step succeeded; if one failed, "
            "read its error, update_task, and run it again.\n"
            "Then tell the user the next fire times and what each run will do."
        )

    @mcp.prompt(name="explain_run", title="Explain a run")
    async def explain_run(
        run_id: Annotated[str, Field(description="The run's id (from list_runs or run_now).")],
    ) -> str:
        """Read a run and explain what happened, what failed and what to change."""
        try:
            run = await engine.get_run(caller(), UUID(run_id))
        except ValueError:
            raise MCPError(INVALID_PARAMS, f"run_id {run_id!r} is not a UUID") from None
        except PaoError as exc:
            raise MCPError(INVALID_PARAMS, str(exc)) from exc
        shown = bounded_run(run)
        return (
            f"Here is run {run.id} ({run_uri(run.id)}) of task {run.task_id}, as get_run returns it:\n\n"
            f"{compact(shown)}\n\n"
            "Explain to the user, briefly: whether it succeeded; if not, which step failed first and why "
            "(its error, its rendered input), and what to change (the task's pipeline with update_task, a "
            "downstream server in mcp.json, a secret, or the schedule). Skipped and cancelled runs carry the "
            "reason. A step whose input or output says 'truncated' is complete at its resource, e.g. "
            f"{step_uri(run.id, '<step id>')}."
        )

    names = ("schedule_pipeline", "explain_run")

    async def known_prompts(ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        # An unknown name is the caller's mistake: an error naming the prompts, not a server traceback.
        if ctx.method == "prompts/get":
            name = (ctx.params or {}).get("name")
            if name not in names:
                raise MCPError(INVALID_PARAMS, f"no prompt {name!r}; prompts: {', '.join(names)}")
        return await call_next(ctx)

    mcp.middleware.append(known_prompts)
