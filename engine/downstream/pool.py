"""The downstream pool: long-lived MCP client sessions to the servers in mcp.json.

Pipeline steps call `<server>.<tool>`; the executor asks this pool, which keeps
one session per server, opened lazily on first use and reused across calls and
runs. JSON-RPC multiplexes, so many worker tasks share one session. Each
session is entered and exited by its own owner task: see
`engine.downstream_sessions`.

Restart. A session is *dropped* (removed from the pool and told to close) when
its process has died, the connection closed, or it stopped answering (a call
timed out and a follow-up ping failed too). The next call for that server opens
a fresh one; the failing call itself surfaces a retryable `DownstreamError`,
never a silent re-send, because a tool call may have side effects.

Downstream stderr goes to the pool's `stderr` (default `sys.stderr`), never to
our stdout, which may itself be an MCP stdio channel (see
`engine.downstream_transports`). Errors and results: `engine.downstream_errors`
and `engine.tool_output`, re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, TextIO, TypeVar, cast

import anyio
import anyio.abc
import mcp_types
from mcp.shared.exceptions import MCPError
from mcp_types import CONNECTION_CLOSED, INTERNAL_ERROR, INVALID_PARAMS, INVALID_REQUEST, REQUEST_TIMEOUT
from pydantic import ValidationError

from pao_orchestrator import logs
from pao_orchestrator.engine.downstream.errors import (
    DownstreamError,
    DownstreamRejected,
    DownstreamTimeout,
    DownstreamUnavailable,
    UnknownServer,
    unknown_tool_error,
)
from pao_orchestrator.engine.downstream.registry import Registry, ServerEntry
from pao_orchestrator.engine.downstream.sessions import (
    Session,
    list_session_tools,
    own_session,
    probe,
    unavailable_error,
)
from pao_orchestrator.engine.downstream.tool_output import ToolListing, ToolOutput, tool_output
from pao_orchestrator.engine.downstream.transports import LogLines, connector
from pao_orchestrator.metrics import Metrics

logger = logging.getLogger("pao_orchestrator.engine.downstream")

_T = TypeVar("_T")

_CLOSE_TIMEOUT = 15.0
"""How long aclose() waits for sessions to close before cancelling them (stdio's own escalation is ~7 s)."""


class DownstreamPool:
    """Sessions to the downstream servers of a Registry; use as `async with DownstreamPool(reg, environ=...) as pool`.

    `environ` is this process's environment (from the settings): `${env:NAME}` references are
    resolved in it, and stdio servers inherit it minus our own secrets.
    """

    def __init__(
        self,
        registry: Registry,
        *,
        environ: Mapping[str, str],
        connect_timeout: float = 30.0,
        default_call_timeout: float = 60.0,
        stderr: TextIO | None = None,
        ping_timeout: float = 5.0,
        metrics: Metrics | None = None,
        log_stderr: bool = False,
    ) -> None:
        self._registry = registry
        self._log_stderr = log_stderr and stderr is None
        self._metrics = metrics or Metrics()
        self._started: set[str] = set()  # servers that had a session: a new one is a restart
        self._environ = environ
        self._connect_timeout = connect_timeout
        self._default_call_timeout = default_call_timeout
        self._stderr = stderr
        self._ping_timeout = ping_timeout
        self._sessions: dict[str, Session] = {}
        self._owners: set[Session] = set()
        self._locks: dict[str, anyio.Lock] = {}
        self._generation = 0
        self._tg: anyio.abc.TaskGroup | None = None
        self._closed = False

    @property
    def registry(self) -> Registry:
        return self._registry

    # ---- lifecycle

    async def __aenter__(self) -> DownstreamPool:
        if self._tg is not None:
            raise RuntimeError("DownstreamPool is already entered")
        if self._closed:
            raise RuntimeError("DownstreamPool is closed and cannot be reused")
        tg = anyio.create_task_group()
        await tg.__aenter__()
        self._tg = tg
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool | None:
        try:
            await self.aclose()
        finally:
            tg, self._tg = self._tg, None
        if tg is not None:
            # Every owner task has finished; leave the group without handing it the body's exception,
            # which anyio would re-raise wrapped in an ExceptionGroup.
            tg.cancel_scope.cancel()
            await tg.__aexit__(None, None, None)
        return None

    async def aclose(self) -> None:
        """Close every session and terminate every child process; idempotent."""
        self._closed = True
        with anyio.CancelScope(shield=True):
            for session in list(self._sessions.values()):
                self._drop(session)
            owners = list(self._owners)
            for session in owners:
                session.request_close()
            with anyio.move_on_after(_CLOSE_TIMEOUT):
                for session in owners:
                    await session.closed.wait()
            stragglers = [session for session in owners if not session.closed.is_set()]
            for session in stragglers:
                logger.warning("downstream server %r did not close in time; cancelling it", session.name)
                session.scope.cancel()
            with anyio.move_on_after(_CLOSE_TIMEOUT):
                for session in stragglers:
                    await session.closed.wait()

    # ---- public operations

    async def call_tool(
        self,
        server: str,
        tool: str,
        arguments: dict[str, Any],
        *,
        timeout: float | None = None,
    ) -> ToolOutput:
        """Call `server.tool`; a tool failure returns ToolOutput(is_error=True), other failures raise."""
        limit = self._default_call_timeout if timeout is None else timeout
        session = await self._session(server, tool)
        client = session.require_client()

        await self._find_tool(session, tool, limit)
        try:
            result = await self._rpc(
                session,
                tool,
                limit,
                f"the call to tool {tool!r}",
                lambda: client.call_tool(tool, arguments, read_timeout_seconds=limit),
            )
        except DownstreamRejected as exc:
            if exc.code == INVALID_PARAMS and "unknown tool" in str(exc).lower():
                session.tools = None
                raise unknown_tool_error(server, tool, await self._tools_or_none(session)) from exc
            raise
        return tool_output(result)

    async def tool_schema(
        self,
        server: str,
        tool: str,
        *,
        timeout: float | None = None,
    ) -> dict[str, Any] | None:
        """The tool's input JSON schema (from the cached listing); None when the server cannot list tools.

        Raises UnknownServer / UnknownTool (not retryable) or DownstreamUnavailable / DownstreamTimeout.
        """
        limit = self._default_call_timeout if timeout is None else timeout
        session = await self._session(server, tool)
        found = await self._find_tool(session, tool, limit)
        return None if found is None else dict(found.input_schema)

    async def list_tools(self, server: str | None = None) -> dict[str, ToolListing]:
        """Each server's tools (cached per session); a server that fails gets an entry with `error` set."""
        if server is not None:
            self._entry(server, None)
            names = [server]
        else:
            names = self._registry.names()
        if not self._closed:
            self._require_entered()
        listings: dict[str, ToolListing] = {}

        async def list_one(name: str) -> None:
            try:
                session = await self._session(name, None)
                tools = await self._rpc(
                    session, None, self._default_call_timeout, "tools/list", lambda: list_session_tools(session)
                )
                listings[name] = ToolListing(server=name, tools=list(tools or []))
            except DownstreamError as exc:
                listings[name] = ToolListing(server=name, error=exc)

        async with anyio.create_task_group() as tg:
            for name in names:
                tg.start_soon(list_one, name)
        return {name: listings[name] for name in names}

    async def ping(self, server: str, *, timeout: float | None = None) -> float:
        """Round-trip seconds of a liveness request; raises DownstreamError (and drops a dead session)."""
        limit = self._ping_timeout if timeout is None else timeout
        session = await self._session(server, None)
        return await self._rpc(session, None, limit, "a ping", lambda: probe(session), probe_on_timeout=False)

    def pid(self, server: str) -> int | None:
        """The process id of the server's open stdio session, if any (diagnostics and tests)."""
        session = self._sessions.get(server)
        return None if session is None or not session.usable() else session.pid

    # ---- sessions

    def _require_entered(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("DownstreamPool must be entered (async with) before use")
        return self._tg

    def _check_open(self, server: str, tool: str | None) -> None:
        if self._closed:
            # Retryable: a worker still running during shutdown gets its step retried by the next process.
            raise DownstreamUnavailable(
                f"downstream server {server!r} is not available: the pool is shutting down",
                server=server,
                tool=tool,
            )

    def _entry(self, server: str, tool: str | None) -> ServerEntry:
        entry = self._registry.get(server)
        if entry is None:
            names = self._registry.names()
            known = (
                f"configured servers: {', '.join(names)}"
                if names
                else "no downstream servers are configured (add them to mcp.json)"
            )
            raise UnknownServer(f"unknown downstream server {server!r}; {known}", server=server, tool=tool)
        return entry

    async def _session(self, server: str, tool: str | None) -> Session:
        """The server's open session, connecting (once, under a per-server lock) when there is none."""
        entry = self._entry(server, tool)
        session = self._sessions.get(server)
        if session is not None and session.usable():
            return session
        self._check_open(server, tool)
        tg = self._require_entered()
        lock = self._locks.setdefault(server, anyio.Lock())
        async with lock:
            session = self._sessions.get(server)
            if session is not None:
                if session.usable():
                    return session
                self._drop(session)
            self._check_open(server, tool)
            # With log_stderr, each server's stderr becomes log lines of its own (see LogLines).
            stderr = cast(TextIO, LogLines(server)) if self._log_stderr else self._stderr
            connect = connector(
                server, entry, tool, stderr=stderr, connect_timeout=self._connect_timeout, environ=self._environ
            )
            self._generation += 1
            session = Session(server, entry, self._generation)
            self._owners.add(session)
            # The session outlives the run that opened it: its task carries no run's log context.
            logs.detached().run(tg.start_soon, own_session, session, connect, self._owners)
            try:
                with anyio.fail_after(self._connect_timeout):
                    await session.ready.wait()
            except TimeoutError:
                self._drop(session)
                raise DownstreamUnavailable(
                    f"downstream server {server!r} ({entry.describe()}) did not start within "
                    f"{self._connect_timeout:g}s",
                    server=server,
                    tool=tool,
                ) from None
            except BaseException:
                self._drop(session)
                raise
            if self._closed:  # aclose() ran while we were connecting
                self._drop(session)
                self._check_open(server, tool)
            if session.client is None or session.error is not None or session.dropped:
                self._drop(session)
                raise await unavailable_error(session, session.error, tool, starting=True)
            self._sessions[server] = session
            restarts = self._metrics.downstream_restarts.labels(server)  # shown as 0 from the first start
            if server in self._started:
                restarts.inc()
            self._started.add(server)
            self._metrics.downstream_up.labels(server).set(1)
            return session

    def _drop(self, session: Session) -> None:
        """Forget the session and have its owner close it; the next use reconnects."""
        session.dropped = True
        self._metrics.downstream_up.labels(session.name).set(0)
        if self._sessions.get(session.name) is session:
            del self._sessions[session.name]
        session.request_close()

    # ---- requests

    async def _find_tool(self, session: Session, tool: str, limit: float) -> mcp_types.Tool | None:
        """The tool's listing entry; None when the server cannot list tools; UnknownTool when it lacks it."""
        for attempt in range(2):
            tools = await self._rpc(session, tool, limit, "tools/list", lambda: list_session_tools(session))
            if tools is None:
                return None
            for candidate in tools:
                if candidate.name == tool:
                    return candidate
            if attempt == 0:
                # The listing may be stale (servers can add tools): look once more before refusing.
                session.tools = None
        raise unknown_tool_error(session.name, tool, tools)

    async def _tools_or_none(self, session: Session) -> list[mcp_types.Tool] | None:
        if not session.usable():
            return None
        try:
            with anyio.fail_after(self._ping_timeout):
                return await list_session_tools(session)
        except Exception:
            return None

    async def _rpc(
        self,
        session: Session,
        tool: str | None,
        limit: float,
        action: str,
        request: Callable[[], Awaitable[_T]],
        *,
        probe_on_timeout: bool = True,
    ) -> _T:
        """Run one request on the session under `timeout`, mapping every failure to a DownstreamError."""
        server = session.name
        try:
            with anyio.fail_after(limit):
                return await request()
        except TimeoutError:
            pass
        except MCPError as exc:
            if exc.code == REQUEST_TIMEOUT:
                pass
            elif exc.code == CONNECTION_CLOSED or (
                # A streamable-HTTP server that restarted no longer knows our session id.
                exc.code == INVALID_REQUEST and exc.message == "Session terminated"
            ):
                self._drop(session)
                raise await unavailable_error(session, exc, tool) from exc
            else:
                raise DownstreamRejected(
                    f"downstream server {server!r} rejected {action}: {exc.message} (JSON-RPC error {exc.code})",
                    server=server,
                    tool=tool,
                    retryable=exc.code == INTERNAL_ERROR,
                    code=exc.code,
                ) from exc
        except ValidationError as exc:
            raise DownstreamError(
                f"downstream server {server!r} returned an invalid result for {action}: "
                f"{exc.error_count()} validation error(s), first: {exc.errors()[0]['msg']}",
                retryable=False,
                server=server,
                tool=tool,
            ) from exc
        except Exception as exc:
            self._drop(session)
            raise await unavailable_error(session, exc, tool) from exc
        # Timed out. A busy server still answers a ping; a hung one does not and gets restarted.
        if probe_on_timeout:
            await self._check_after_timeout(session)
        else:
            self._drop(session)
        raise DownstreamTimeout(
            f"downstream server {server!r} did not answer {action} within {float(limit)}s",
            server=server,
            tool=tool,
        )

    async def _check_after_timeout(self, session: Session) -> None:
        if not session.usable():
            self._drop(session)
            return
        try:
            with anyio.fail_after(self._ping_timeout):
                await probe(session)
        except Exception as exc:
            logger.warning(
                "downstream server %r is not answering (%r); it will be restarted on next use",
                session.name,
                exc,
            )
            self._drop(session)
