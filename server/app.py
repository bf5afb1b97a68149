"""The MCP server factory and the transports it is served over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from mcp.server.mcpserver import MCPServer
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from pao_orchestrator import __version__
from pao_orchestrator.contracts import APP_NAME
from pao_orchestrator.engine import Agent, Engine
from pao_orchestrator.server.stdio import interruptible_stdin
from pao_orchestrator.server.tools import register_tools

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
A durable scheduler. Create tasks that fire on a cron or RFC 5545 schedule, once, on a published event
(publish_event), or when a polled condition turns true; each run executes a
pipeline of tool calls on the servers listed by list_downstream_tools. Start with preview_schedule to
check a schedule, create_task to save it, run_now to try it, and get_run / list_runs to read what
happened."""


def create_server(engine: Engine, *, caller: Agent | None = None) -> MCPServer[Any]:
    """An MCPServer bound to a running engine; tool calls act as `caller` (default: the local owner)."""
    mcp: MCPServer[Any] = MCPServer(
        name=APP_NAME,
        title="Personal Agent Orchestrator",
        instructions=INSTRUCTIONS,
        version=__version__,
        log_level=engine.settings.log_level.upper(),  # type: ignore[arg-type]
    )
    agent = caller or engine.owner
    register_tools(mcp, engine, lambda: agent)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_request: Request) -> Response:
        try:
            return JSONResponse({"status": "ok", **(await engine.health())})
        except Exception as exc:  # readiness reports, it does not raise
            return JSONResponse({"status": "unavailable", "error": str(exc)}, status_code=503)

    for path, handler in (("/health", health), ("/health/live", health), ("/health/ready", ready)):
        mcp.custom_route(path, methods=["GET"], include_in_schema=False)(handler)
    return mcp


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
