"""The MCP server factory and the transports it is served over."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn
from mcp.server.auth.routes import build_resource_metadata_url
from mcp.server.auth.settings import AuthSettings
from mcp.server.mcpserver import MCPServer
from mcp_types import ListResourcesResult
from pydantic import AnyHttpUrl
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from pao_orchestrator import __version__
from pao_orchestrator.contracts import APP_NAME, MAX_REQUEST_BODY_BYTES
from pao_orchestrator.engine import Agent, Engine
from pao_orchestrator.metrics import CONTENT_TYPE_LATEST
from pao_orchestrator.server.auth import AgentTokenVerifier, CallerMiddleware, agent_of
from pao_orchestrator.server.face import guard_listen, serve_legacy_subscriptions, serve_paged_resource_list
from pao_orchestrator.server.http import (
    HEADER_TIMEOUT_SECONDS,
    HeaderTimeoutProtocol,
    HttpGuard,
    check_bind,
    transport_security,
)
from pao_orchestrator.server.live import LegacySubscriptions, LiveBus
from pao_orchestrator.server.prompts import register_prompts
from pao_orchestrator.server.resources import list_resources_page, register_resources, visibility
from pao_orchestrator.server.stdio import interruptible_stdin
from pao_orchestrator.server.tools import register_tools
from pao_orchestrator.server.toolset import ToolSet

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
A durable scheduler. Create tasks that fire on a cron or RFC 5545 schedule, once, on a published event
(publish_event), or when a polled condition turns true; each run executes a
pipeline of tool calls on the servers listed by list_downstream_tools. Start with preview_schedule to
check a schedule, create_task to save it, run_now (with wait) to try it, and get_run / list_runs to read
what happened. Tasks and runs are also resources (pao://tasks/{id}, pao://runs/{id}) you can subscribe to."""


@dataclass(frozen=True)
class WebOptions:
    """How the HTTP and SSE transports are served (see server.http)."""

    transport: str = "http"
    host: str = "127.0.0.1"
    port: int = 8000
    auth: bool = True
    insecure: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_origins: tuple[str, ...] = ()
    public_url: str | None = None
    header_timeout: float = HEADER_TIMEOUT_SECONDS
    max_body: int = MAX_REQUEST_BODY_BYTES

    @property
    def base_url(self) -> str:
        if self.public_url:
            return self.public_url.rstrip("/")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def resource_url(self) -> str:
        return self.base_url + ("/sse" if self.transport == "sse" else "/mcp")


def create_server(
    engine: Engine, *, caller: Agent | None = None, web: WebOptions | None = None, caller_token: str | None = None
) -> MCPServer[Any]:
    """An MCPServer bound to a running engine.

    Over stdio (`web` None) every call acts as `caller` (default: the local owner), checked again
    on every request when it came from `caller_token` (PAO_TOKEN). Over HTTP and
    SSE with `web.auth`, every request needs a bearer token of an agent (the SDK's auth hooks with
    `AgentTokenVerifier`); without it, every call acts as the local owner.
    """
    authenticated = web is not None and web.auth
    auth_settings = (
        AuthSettings(
            issuer_url=AnyHttpUrl(web.base_url),
            resource_server_url=AnyHttpUrl(web.resource_url),
            validate_token_resource=False,  # pao issues its own tokens for this server only
            required_scopes=None,  # per tool: see server.auth.TOOL_SCOPES
        )
        if web is not None and authenticated
        else None
    )
    callers = CallerMiddleware(
        engine, None if authenticated else (caller or engine.owner), default_token=None if web else caller_token
    )
    who = callers.caller
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
        auth=auth_settings,
        token_verifier=AgentTokenVerifier(engine) if authenticated else None,
    )
    mcp.middleware.append(callers)
    register_resources(mcp, engine, who, reads.health, reads.downstream)
    register_prompts(mcp, engine, who)

    async def list_page(cursor: str | None) -> ListResourcesResult:
        return await list_resources_page(engine, who(), cursor, await mcp.list_resources())

    serve_paged_resource_list(mcp, list_page)
    visible = visibility(engine, who)
    serve_legacy_subscriptions(mcp, LegacySubscriptions(bus), visible)
    guard_listen(mcp, visible)
    if engine.changes is not None:
        engine.changes.subscribe(bus.on_change)

    async def health(_request: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(request: Request) -> Response:
        # Only an authenticated agent learns more than up or down: worker names hold host and pid.
        agent = agent_of(request.scope.get("user"))
        try:
            details = await engine.health()
        except Exception:  # readiness reports, it does not raise (nor say why to strangers)
            log.warning("readiness check failed", exc_info=True)
            return JSONResponse({"status": "unavailable"}, status_code=503)
        return JSONResponse({"status": "ok", **details} if agent is not None else {"status": "ok"})

    for path, handler in (("/health", health), ("/health/live", health), ("/health/ready", ready)):
        mcp.custom_route(path, methods=["GET"], include_in_schema=False)(handler)
    mcp.custom_route("/metrics", methods=["GET"], include_in_schema=False)(
        _metrics_route(engine, authenticated=authenticated)
    )
    return mcp


def _metrics_route(engine: Engine, *, authenticated: bool = False) -> Callable[[Request], Awaitable[Response]]:
    """`GET /metrics`. Behind auth (HTTP and SSE with tokens) it needs an agent's bearer token, like every
    route but the health checks: its labels name tasks' tools and downstream servers."""

    async def metrics(request: Request) -> Response:
        if authenticated and agent_of(request.scope.get("user")) is None:
            return JSONResponse(
                {"error": "invalid_token", "error_description": "GET /metrics needs a bearer token"},
                status_code=401,
                headers={"WWW-Authenticate": 'Bearer error="invalid_token"'},
            )
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


def web_app(mcp: MCPServer[Any], engine: Engine, web: WebOptions) -> Starlette:
    """The Starlette app of the HTTP or SSE transport, with the checks of server.http."""
    security = transport_security(
        web.host, allowed_hosts=list(web.allowed_hosts), allowed_origins=list(web.allowed_origins)
    )
    app: Starlette
    if web.transport == "sse":
        app = mcp.sse_app(host=web.host, transport_security=security, max_request_body_size=web.max_body)
    else:
        app = mcp.streamable_http_app(host=web.host, transport_security=security, max_request_body_size=web.max_body)
    metadata_url = str(build_resource_metadata_url(AnyHttpUrl(web.resource_url))) if web.auth else None
    # Innermost of the app's middleware: after the SDK's authentication, before the transport.
    app.user_middleware.append(
        Middleware(HttpGuard, engine=engine, auth=web.auth, resource_metadata_url=metadata_url, max_body=web.max_body)
    )
    return app


async def serve(
    mcp: MCPServer[Any],
    transport: str,
    *,
    host: str,
    port: int,
    stop: asyncio.Event,
    engine: Engine | None = None,
    web: WebOptions | None = None,
) -> None:
    """Serve until the client goes away (stdio) or `stop` is set.

    Stopping asks the transport to finish rather than cancelling it: over stdio the
    session reads end of file, as if the client had closed stdin; uvicorn exits as on
    its own signals (closing connections, then the app's shutdown).
    """
    if transport == "stdio":
        with interruptible_stdin() as interrupt:
            await _until(stop, mcp.run_stdio_async(), interrupt)
        return
    assert engine is not None
    web = web or WebOptions(transport=transport, host=host, port=port)
    check_bind(web.host, auth=web.auth, insecure=web.insecure)
    app = web_app(mcp, engine, web)
    protocol = type("PaoHttpProtocol", (HeaderTimeoutProtocol,), {"header_timeout": web.header_timeout})
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", http=protocol)
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
