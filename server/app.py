"""The MCP server factory and the transports it is served over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp_types import ListResourcesResult
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pao_orchestrator import __version__
from pao_orchestrator.contracts import APP_NAME
from pao_orchestrator.engine import Agent, Engine
from pao_orchestrator.metrics import CONTENT_TYPE_LATEST
from pao_orchestrator.server.face import serve_legacy_subscriptions, serve_paged_resource_list
from pao_orchestrator.server.live import LegacySubscriptions, LiveBus
from pao_orchestrator.server.prompts import register_prompts
from pao_orchestrator.server.resources import list_resources_page, register_resources
from pao_orchestrator.server.stdio import interruptible_stdin
from pao_orchestrator.server.tools import register_tools
from pao_orchestrator.server.toolset import ToolSet

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
A durable scheduler. Create tasks that fire on a cron or RFC 5545 schedule, or once; each run executes a
pipeline of tool calls on the servers listed by list_downstream_tools. Start with preview_schedule to
check a schedule, create_task to save it, run_now (with wait) to try it, and get_run / list_runs to read
what happened. Tasks and runs are also resources (pao://tasks/{id}, pao://runs/{id}) you can subscribe to."""


def create_server(engine: Engine, *, caller: Agent | None = None) -> MCPServer[Any]:
    """An MCPServer bound to a running engine; tool calls act as `caller` (default: the local owner).

    Called on the running event loop: it subscribes the server's bus to the engine's change feed."""
    agent = caller or engine.owner

    def who() -> Agent:
        return agent

    tools = ToolSet()
    reads = register_tools(tools, engine, who)
    bus = LiveBus()
    mcp: MCPServer[Any] = MCPServer(
        name=APP_NAME,
        title="Personal Agent Orchestrator",
        instructions=INSTRUCTIONS,
        version=__version__,
        log_level=engine.settings.log_level.upper(),  # type: ignore[arg-type]
        tools=list(tools.tools.values()),
        subscriptions=bus,
    )
    register_resources(mcp, engine, who, reads.health, reads.downstream)
    register_prompts(mcp, engine, who)

    async def list_page(cursor: str | None) -> ListResourcesResult:
        return await list_resources_page(engine, who(), cursor, await mcp.list_resources())

    serve_paged_resource_list(mcp, list_page)
    serve_legacy_subscriptions(mcp, LegacySubscriptions(bus))
    if engine.changes is not None:
        engine.changes.subscribe(bus.on_change)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> Response:
        try:
            return JSONResponse({"status": "ok", **(await engine.health())})
        except Exception as exc:  # readiness reports, it does not raise
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)

    for path, handler in (("/health", health), ("/health/live", health), ("/health/ready", ready)):
        mcp.custom_route(path, methods=["GET"], include_in_schema=False)(handler)
    mcp.custom_route("/metrics", methods=["GET"], include_in_schema=False)(_metrics_route(engine))
    return mcp


def _metrics_route(engine: Engine) -> Callable[[Request], Awaitable[Response]]:
    async def metrics(_request: Request) -> Response:
        return Response(await engine.metrics_exposition(), media_type=CONTENT_TYPE_LATEST)

    return metrics


async def serve_metrics(engine: Engine, *, host: str, port: int, stop: asyncio.Event) -> None:
    """`GET /metrics` alone on its own port (`--metrics-port`): for `pao worker` and a stdio `pao serve`,
    which have no HTTP server of their own. Runs until `stop` is set."""
    app = Starlette(routes=[Route("/metrics", _metrics_route(engine), methods=["GET"])])
    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="off"))

    def ask_to_exit() -> None:
        server.should_exit = True

    await _until(stop, server.serve(), ask_to_exit)


async def serve(mcp: MCPServer[Any], transport: str, *, host: str, port: int, stop: asyncio.Event) -> None:
    """Serve until the client goes away (stdio) or `stop` is set.

    Stopping asks the transport to finish rather than cancelling it: over stdio the
    session reads end of file, as if the client had closed stdin; uvicorn exits as on
    its own signals (closing connections, then the app's shutdown).
    """
    if transport == "stdio":
        with interruptible_stdin() as interrupt:
            await _until(stop, mcp.run_stdio_async(), interrupt)
        return
    app: Starlette
    app = mcp.sse_app(host=host) if transport == "sse" else mcp.streamable_http_app(host=host)
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)

    def ask_to_exit() -> None:
        server.should_exit = True

    await _until(stop, server.serve(), ask_to_exit)


async def _until(stop: asyncio.Event, serving: Awaitable[None], ask_to_finish: Callable[[], None]) -> None:
    """Run `serving` to its end; if `stop` is set first, ask it to finish (and still wait for it)."""
    task = asyncio.ensure_future(serving)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({task, stopped}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            ask_to_finish()
        await task
    finally:
        stopped.cancel()
        task.cancel()  # only when this wait itself was cancelled (past the shutdown grace)
