"""Who is calling, and may they: bearer tokens through the MCP SDK's auth hooks, scopes per tool.

Over HTTP and SSE the SDK's `BearerAuthBackend` asks `AgentTokenVerifier` about the token of every
request and its `RequireAuthMiddleware` answers 401 (with `WWW-Authenticate` pointing at the
protected-resource metadata) when there is none. `CallerMiddleware`, an SDK server middleware,
then turns the request's token (or, over stdio, the session's fixed agent) into the engine's
`Agent` for the length of the request, and refuses a tool whose scope the agent lacks, naming it.
Over HTTP that refusal comes earlier still, as a 403 (see `server.http`).
"""

from __future__ import annotations

import contextvars
import logging
from typing import Any, Final

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken
from mcp.server.context import CallNext, HandlerResult, ServerRequestContext
from mcp.shared.exceptions import MCPError
from mcp_types import INVALID_REQUEST, CallToolResult, TextContent

from pao_orchestrator.engine import Agent, Engine
from pao_orchestrator.vocabulary import Scope

log = logging.getLogger(__name__)

TOOL_SCOPES: Final[dict[str, Scope | None]] = {
    "create_task": Scope.TASKS_WRITE,
    "update_task": Scope.TASKS_WRITE,
    "snooze": Scope.TASKS_WRITE,
    "pause_task": Scope.TASKS_WRITE,
    "resume_task": Scope.TASKS_WRITE,
    "cancel_task": Scope.TASKS_WRITE,
    "get_task": Scope.TASKS_READ,
    "list_tasks": Scope.TASKS_READ,
    "preview_schedule": Scope.TASKS_READ,
    "list_downstream_tools": Scope.TASKS_READ,
    "run_now": Scope.RUNS_WRITE,
    "cancel_run": Scope.RUNS_WRITE,
    "get_run": Scope.RUNS_READ,
    "list_runs": Scope.RUNS_READ,
    "publish_event": Scope.EVENTS_PUBLISH,
    "list_events": Scope.EVENTS_PUBLISH,
    "get_event": Scope.EVENTS_PUBLISH,
    "create_agent": Scope.ADMIN,
    "list_agents": Scope.ADMIN,
    "get_agent": Scope.ADMIN,
    "update_agent": Scope.ADMIN,
    "delete_agent": Scope.ADMIN,
    "list_audit": Scope.ADMIN,
    "health": None,  # any authenticated agent
}
"""The scope each tool needs. A tool missing here needs `admin`: a new tool is closed until named."""


RESOURCE_SCOPES: Final[dict[str, Scope | None]] = {
    "tasks": Scope.TASKS_READ,  # as get_task
    "runs": Scope.RUNS_READ,  # as get_run (a run's steps too)
    "events": Scope.EVENTS_PUBLISH,  # as get_event
    "downstream": Scope.TASKS_READ,  # as list_downstream_tools
    "health": None,  # as health
}
"""The scope reading (or following) a `pao://` resource needs: that of the tool that reads the same thing."""


def resource_scope(uri: str) -> Scope | None:
    """The scope reading `uri` needs; None for anything any agent may read (or that is not pao's)."""
    if not uri.startswith("pao://"):
        return None
    return RESOURCE_SCOPES.get(uri.removeprefix("pao://").split("/", 1)[0], Scope.ADMIN)


def _resource_uris(method: str, params: dict[str, Any]) -> list[str]:
    """The resources a request reads or follows."""
    if method in ("resources/read", "resources/subscribe"):
        uri = params.get("uri")
        return [uri] if isinstance(uri, str) else []
    if method == "subscriptions/listen":
        wanted = params.get("notifications")
        uris = (
            wanted.get("resourceSubscriptions") or wanted.get("resource_subscriptions")
            if isinstance(wanted, dict)
            else None
        )
        return [u for u in uris if isinstance(u, str)] if isinstance(uris, list) else []
    return []


def required_scope(tool: str) -> Scope | None:
    return TOOL_SCOPES.get(tool, Scope.ADMIN)


def missing_scope(agent: Agent, tool: str) -> Scope | None:
    """The scope `agent` lacks to call `tool`, or None when it may."""
    scope = required_scope(tool)
    return scope if scope is not None and not agent.can(scope) else None


def forbidden_message(agent: Agent, what: str, scope: Scope) -> str:
    """The refusal of `what` (a tool's name, or "reading <uri>") to an agent without `scope`."""
    return (
        f"forbidden: {what} needs the scope {scope.value!r}, which agent {agent.name!r} does not have "
        f"(its scopes: {', '.join(agent.scopes) or 'none'}); an admin can grant it with update_agent"
    )


class AgentTokenVerifier:
    """The SDK's `TokenVerifier`: a pao agent token, checked against the database on every request."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def verify_token(self, token: str) -> AccessToken | None:
        agent = await self._engine.authenticate(token)
        if agent is None:
            return None
        return AccessToken(
            token=token,
            client_id=str(agent.id),
            scopes=list(agent.scopes),
            subject=str(agent.id),
            claims={"name": agent.name, "is_owner": agent.is_owner, "created_at": agent.created_at.isoformat()},
        )


def agent_of(user: object) -> Agent | None:
    """The engine's Agent for an authenticated request's user (set by the SDK's BearerAuthBackend)."""
    if not isinstance(user, AuthenticatedUser):
        return None
    token = user.access_token
    claims = token.claims or {}
    return Agent(
        id=token.client_id,
        name=str(claims.get("name", token.client_id)),
        scopes=list(token.scopes),
        is_owner=bool(claims.get("is_owner", False)),
        created_at=claims.get("created_at"),
    )


class CallerMiddleware:
    """SDK server middleware: sets the caller of each request, and refuses tools it may not call.

    The caller is the agent of the request's bearer token (HTTP, SSE) or else `default` (stdio:
    the local owner, or the agent `PAO_TOKEN` names). A request over HTTP without a token never
    gets here: the SDK answers it 401.
    """

    def __init__(self, engine: Engine, default: Agent | None, *, default_token: str | None = None) -> None:
        self._engine = engine
        self._default = default
        # The stdio session's PAO_TOKEN: checked again on every request, so revoking it (or its
        # expiry) takes effect at once there too, not at the next start.
        self._default_token = default_token
        self.current: contextvars.ContextVar[Agent | None] = contextvars.ContextVar("pao_caller", default=None)

    def caller(self) -> Agent:
        agent = self.current.get()
        if agent is None:  # a request outside the middleware: refuse rather than guess an identity
            raise PermissionError("no authenticated caller for this request")
        return agent

    async def __call__(self, ctx: ServerRequestContext[Any, Any], call_next: CallNext) -> HandlerResult:
        agent = self._resolve(ctx)
        if agent is not None and agent is self._default and self._default_token is not None:
            agent = await self._engine.authenticate(self._default_token)
            if agent is None and ctx.method == "tools/call":
                await self._engine.audit_denied(None, "authenticate", "stdio", None, "PAO_TOKEN revoked or expired")
                return CallToolResult(
                    content=[TextContent(type="text", text="unauthorized: PAO_TOKEN was revoked or has expired")],
                    is_error=True,
                )
        if agent is None:
            return await call_next(ctx)  # initialize and notifications of a session without a caller
        request_id = str(ctx.request_id) if ctx.request_id is not None else None
        agent = agent.model_copy(update={"request_id": request_id})
        if ctx.method == "tools/call" and isinstance(ctx.params, dict):
            tool = ctx.params.get("name")
            scope = missing_scope(agent, tool) if isinstance(tool, str) else None
            if scope is not None and isinstance(tool, str):
                await self._engine.audit_denied(agent, tool, "tool", tool, f"missing scope {scope.value}")
                return CallToolResult(
                    content=[TextContent(type="text", text=forbidden_message(agent, tool, scope))], is_error=True
                )
        elif isinstance(ctx.params, dict):
            for uri in _resource_uris(ctx.method, ctx.params):
                needed = resource_scope(uri)
                if needed is not None and not agent.can(needed):
                    await self._engine.audit_denied(agent, ctx.method, "resource", uri, f"missing scope {needed.value}")
                    raise MCPError(INVALID_REQUEST, forbidden_message(agent, f"reading {uri}", needed))
        token = self.current.set(agent)
        try:
            return await call_next(ctx)
        finally:
            self.current.reset(token)

    def _resolve(self, ctx: ServerRequestContext[Any, Any]) -> Agent | None:
        scope = getattr(ctx.request, "scope", None)
        if isinstance(scope, dict) and "user" in scope:
            return agent_of(scope["user"])
        return self._default
