"""The HTTP face (streamable HTTP and SSE): safe binding, Host and Origin checks, body and header
limits, and the per-tool scope challenge.

* Host and Origin are checked by the SDK's transport security on every bind, not only on
  loopback: the bind address (and `--allowed-host`) are the allowed hosts; loopback origins
  and `--allowed-origin` the allowed origins. A request without an Origin (not a browser) passes.
* A non-loopback bind without authentication is refused unless `--insecure` says so.
* No CORS headers are sent: a browser page of another origin cannot read any answer.
* Request bodies above MAX_REQUEST_BODY_BYTES get 413 before they are read further.
* A connection must finish its request line and headers within `header_timeout` seconds, or it
  is closed: uvicorn has no such timeout of its own, so slowloris connections would stay forever.
* Over HTTP, a `tools/call` for a tool whose scope the agent lacks is answered 403 with
  `WWW-Authenticate: Bearer error="insufficient_scope", scope="..."` (the MCP authorization
  spec's runtime scope challenge). Failed authentications are written to the audit log.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from collections import deque
from typing import Any, Final

import h11
from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.transport_security import TransportSecuritySettings
from starlette.datastructures import Headers
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from uvicorn.protocols.http.h11_impl import H11Protocol

from pao_orchestrator.contracts import MAX_REQUEST_BODY_BYTES
from pao_orchestrator.engine import Engine
from pao_orchestrator.errors import ConfigurationError
from pao_orchestrator.server.auth import agent_of, forbidden_message, missing_scope

log = logging.getLogger(__name__)

LOOPBACK_NAMES: Final = frozenset({"localhost", "127.0.0.1", "::1"})
HEADER_TIMEOUT_SECONDS: Final = 10.0
PROTECTED_PREFIXES: Final = ("/mcp", "/sse", "/messages")


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, auth: bool, insecure: bool) -> None:
    """Refuse to serve a non-loopback address without authentication, unless told `insecure`."""
    if not auth and not is_loopback(host) and not insecure:
        raise ConfigurationError(
            f"refusing to serve on {host} without authentication: anyone who can reach it could run "
            "pipelines calling every server in mcp.json. Drop --no-auth (agents then need a token: "
            "pao agents create), bind to 127.0.0.1, or pass --insecure if this network is trusted"
        )


def _host_patterns(host: str) -> list[str]:
    bracketed = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return [bracketed, f"{bracketed}:*"]


def transport_security(host: str, *, allowed_hosts: list[str], allowed_origins: list[str]) -> TransportSecuritySettings:
    """Host and Origin checks for this bind: on for every address, wildcard binds included."""
    hosts: list[str] = []
    if is_loopback(host) or host in ("0.0.0.0", "::"):
        hosts += ["127.0.0.1:*", "localhost:*", "[::1]:*", "127.0.0.1", "localhost", "[::1]"]
    if host not in ("0.0.0.0", "::"):
        hosts += _host_patterns(host)
    for extra in allowed_hosts:
        hosts += [extra] if ":" in extra.strip("[]").rsplit("]", 1)[-1] else _host_patterns(extra)
    origins = ["http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*", *allowed_origins]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class HttpGuard:
    """Outermost checks of the MCP endpoints that need the request's body or its authenticated user.

    Sits inside the SDK's authentication middleware (so `scope["user"]` is known) and before the
    transport: bounds the body (413), records failed authentications, and answers a `tools/call`
    the agent has no scope for with 403 and the scope challenge.
    """

    def __init__(
        self,
        app: ASGIApp,
        engine: Engine,
        *,
        auth: bool,
        resource_metadata_url: str | None,
        max_body: int = MAX_REQUEST_BODY_BYTES,
    ) -> None:
        self.app = app
        self.engine = engine
        self.auth = auth
        self.resource_metadata_url = resource_metadata_url
        self.max_body = max_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(PROTECTED_PREFIXES):
            await self.app(scope, receive, send)
            return
        agent = agent_of(scope.get("user"))
        if self.auth and agent is None:
            await self._audit_unauthenticated(scope)
            await self.app(scope, receive, send)  # the SDK's RequireAuthMiddleware answers 401
            return
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body:
            await self._too_large(scope, receive, send)
            return
        if scope.get("method") != "POST":
            await self.app(scope, receive, send)
            return
        body, messages = await self._read(receive)
        if body is None:
            await self._too_large(scope, receive, send)
            return
        if agent is not None and isinstance(scope.get("user"), AuthenticatedUser):
            tool = _called_tool(body)
            missing = missing_scope(agent, tool) if tool is not None else None
            if tool is not None and missing is not None:
                await self.engine.audit_denied(agent, tool, "tool", tool, f"missing scope {missing.value}")
                challenge = f'Bearer error="insufficient_scope", scope="{missing.value}"'
                if self.resource_metadata_url:
                    challenge += f', resource_metadata="{self.resource_metadata_url}"'
                response = JSONResponse(
                    {"error": "insufficient_scope", "error_description": forbidden_message(agent, tool, missing)},
                    status_code=403,
                    headers={"WWW-Authenticate": challenge},
                )
                await response(scope, receive, send)
                return

        async def replay() -> Message:
            return messages.popleft() if messages else await receive()

        await self.app(scope, replay, send)

    async def _read(self, receive: Receive) -> tuple[bytes | None, deque[Message]]:
        """The whole body (None past the limit) and the messages to replay to the app."""
        chunks = bytearray()
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return bytes(chunks), deque([{"type": "http.request", "body": bytes(chunks)}, message])
            chunks.extend(message.get("body", b""))
            if len(chunks) > self.max_body:
                return None, deque()
            if not message.get("more_body", False):
                return bytes(chunks), deque([{"type": "http.request", "body": bytes(chunks), "more_body": False}])

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = Response(
            f"request body too large: at most {self.max_body:,} bytes", status_code=413, media_type="text/plain"
        )
        await response(scope, receive, send)

    async def _audit_unauthenticated(self, scope: Scope) -> None:
        header = Headers(scope=scope).get("authorization") or ""
        reason = "no bearer token" if not header.lower().startswith("bearer ") else "unknown, revoked or expired token"
        try:
            await self.engine.audit_denied(None, "authenticate", "endpoint", str(scope.get("path")), reason)
        except Exception:  # the 401 must not depend on the audit write
            log.exception("could not record a failed authentication")


def _called_tool(body: bytes) -> str | None:
    """The tool a JSON-RPC `tools/call` body names (None for anything else, batches included)."""
    if b"tools/call" not in body:
        return None
    try:
        message: Any = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict) or message.get("method") != "tools/call":
        return None
    params = message.get("params")
    name = params.get("name") if isinstance(params, dict) else None
    return name if isinstance(name, str) else None


class HeaderTimeoutProtocol(H11Protocol):
    """uvicorn's h11 protocol, closing a connection that has not sent a whole request head in time.

    The timer runs while the connection waits for a request line and headers (a new connection,
    or a kept-alive one between requests) and stops once h11 has a complete request head.
    """

    header_timeout: float = HEADER_TIMEOUT_SECONDS
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def handle_events(self) -> None:
        super().handle_events()
        if self.conn.their_state is not h11.IDLE:
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            self.transport.close()
