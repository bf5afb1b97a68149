"""The downstream pool: long-lived MCP client sessions to the servers in mcp.json.

Pipeline steps call `<server>.<tool>`; the executor asks this pool, which keeps
one session per server, opened lazily on first use and reused across calls and
runs. JSON-RPC multiplexes, so many worker tasks share one session.

Session ownership. The SDK's `Client` is built from anyio task groups and
cancel scopes, which must be entered and exited by the same task. So every
session has an *owner task*, started in the pool's task group, that enters the
`Client`, publishes it, and parks until asked to close; callers only send
requests through the published client. Closing a session means setting its
`close_requested` event (or cancelling its scope while it is still connecting):
the owner then exits the `Client` in its own task, which for stdio closes the
child's stdin and escalates to SIGTERM/SIGKILL of its process group.

Restart. A session is *dropped* (removed from the pool and told to close) when
its process has died, the connection closed, or it stopped answering (a call
timed out and a follow-up ping failed too). The next call for that server opens
a fresh one; the failing call itself surfaces a retryable `DownstreamError`,
never a silent re-send, because a tool call may have side effects.

Downstream stderr goes to the pool's `stderr` (default `sys.stderr`), never to
our stdout, which may itself be an MCP stdio channel.
"""

from __future__ import annotations

import importlib.metadata
import io
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, TextIO, TypeVar

import anyio
import anyio.abc
import httpx2
import mcp_types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types import (
    CONNECTION_CLOSED,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    REQUEST_TIMEOUT,
)
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS
from pydantic import ValidationError

from engine.registry import MissingEnvironmentVariable, Registry, RemoteServer, ServerEntry, StdioServer
from store.errors import StepError

__all__ = [
    "DownstreamConfigError",
    "DownstreamError",
    "DownstreamPool",
    "DownstreamRejected",
    "DownstreamTimeout",
    "DownstreamUnavailable",
    "ToolListing",
    "ToolOutput",
    "UnknownServer",
    "UnknownTool",
]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")

_CLOSE_TIMEOUT = 15.0
"""How long aclose() waits for sessions to close before cancelling them (stdio's own escalation is ~7 s)."""

_EXIT_CODE_WAIT = 1.0
"""How long to wait for a dead child's exit status, to name it in the error."""

_LIST_PAGE_CAP = 100
"""tools/list pages followed at most, so a paginator that never ends cannot hang a call."""


def _client_info() -> mcp_types.Implementation:
    try:
        version = importlib.metadata.version("pao")
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return mcp_types.Implementation(name="pao", version=version)


_CLIENT_INFO = _client_info()


# --------------------------------------------------------------------------- errors


class DownstreamError(StepError):
    """A call to a downstream MCP server failed; the message names the server (and tool)."""

    def __init__(self, message: str, *, retryable: bool, server: str, tool: str | None = None) -> None:
        self.server = server
        self.tool = tool
        super().__init__(message, retryable=retryable)


class UnknownServer(DownstreamError):
    """The step names a server that mcp.json does not define."""

    def __init__(self, message: str, *, server: str, tool: str | None = None) -> None:
        super().__init__(message, retryable=False, server=server, tool=tool)


class UnknownTool(DownstreamError):
    """The server has no such tool."""

    def __init__(self, message: str, *, server: str, tool: str | None = None) -> None:
        super().__init__(message, retryable=False, server=server, tool=tool)


class DownstreamConfigError(DownstreamError):
    """The server's mcp.json entry cannot be used as is (e.g. a referenced variable is unset)."""

    def __init__(self, message: str, *, server: str, tool: str | None = None) -> None:
        super().__init__(message, retryable=False, server=server, tool=tool)


class DownstreamUnavailable(DownstreamError):
    """The server could not be started or reached, or died; the next call restarts it."""

    def __init__(self, message: str, *, server: str, tool: str | None = None, retryable: bool = True) -> None:
        super().__init__(message, retryable=retryable, server=server, tool=tool)


class DownstreamTimeout(DownstreamError):
    """The server did not answer in time."""

    def __init__(self, message: str, *, server: str, tool: str | None = None) -> None:
        super().__init__(message, retryable=True, server=server, tool=tool)


class DownstreamRejected(DownstreamError):
    """The server answered with a JSON-RPC error (invalid params, ...)."""

    def __init__(
        self, message: str, *, server: str, tool: str | None = None, retryable: bool = False, code: int
    ) -> None:
        self.code = code
        super().__init__(message, retryable=retryable, server=server, tool=tool)


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class ToolOutput:
    """What a tool call produced.

    `value` is the structured content when the tool gives it; else the text
    content parsed as JSON when it parses; else the text (several text blocks
    joined by newlines). Non-text blocks are described as dicts
    (`{"type": "image", "mimeType": ...}`) without their data; when the content
    mixes blocks, `value` is the list of per-block values.
    """

    value: Any
    is_error: bool
    text: str


@dataclass(frozen=True)
class ToolListing:
    """One server's tools, or why they could not be listed (the server failed to start, ...)."""

    server: str
    tools: list[mcp_types.Tool] = field(default_factory=list)
    error: DownstreamError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe_block(block: mcp_types.ContentBlock) -> Any:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return {"type": block.type, "mimeType": block.mime_type}
    if isinstance(block, mcp_types.ResourceLink):
        link: dict[str, Any] = {"type": "resource_link", "uri": block.uri, "name": block.name}
        if block.mime_type is not None:
            link["mimeType"] = block.mime_type
        return link
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        described: dict[str, Any] = {"type": "resource", "uri": resource.uri}
        if resource.mime_type is not None:
            described["mimeType"] = resource.mime_type
        if isinstance(resource, mcp_types.TextResourceContents):
            described["text"] = resource.text
        return described
    return {"type": getattr(block, "type", type(block).__name__)}


def _parse_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_output(result: mcp_types.CallToolResult) -> ToolOutput:
    """Convert an SDK result into a ToolOutput (see its docstring for the rules)."""
    texts = [block.text for block in result.content if isinstance(block, mcp_types.TextContent)]
    text = "\n".join(texts)
    value: Any
    if result.structured_content is not None:
        value = result.structured_content
    elif not result.content:
        value = None
    elif len(texts) == len(result.content):
        value = _parse_text(text)
    elif len(result.content) == 1:
        value = _describe_block(result.content[0])
    else:
        value = [_describe_block(block) for block in result.content]
    return ToolOutput(value=value, is_error=bool(result.is_error), text=text)


# --------------------------------------------------------------------------- sessions


class _Session:
    """One connection to one server, entered and exited by its owner task."""

    def __init__(self, name: str, entry: ServerEntry, generation: int) -> None:
        self.name = name
        self.entry = entry
        self.generation = generation
        self.scope = anyio.CancelScope()
        self.ready = anyio.Event()  # set once connected, or once connecting failed
        self.close_requested = anyio.Event()
        self.closed = anyio.Event()
        self.tools_lock = anyio.Lock()
        self.client: Client | None = None
        self.error: BaseException | None = None
        self.process: anyio.abc.Process | None = None
        self.tools: list[mcp_types.Tool] | None = None
        self.dropped = False

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid

    def usable(self) -> bool:
        if self.dropped or self.client is None or self.closed.is_set():
            return False
        return self.process is None or self.process.returncode is None

    def require_client(self) -> Client:
        if self.client is None:  # pragma: no cover - callers only get connected sessions
            raise RuntimeError("session is not connected")
        return self.client

    def request_close(self) -> None:
        self.close_requested.set()
        if not self.ready.is_set():
            self.scope.cancel()


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        found: list[BaseException] = []
        for inner in exc.exceptions:
            found.extend(_leaves(inner))
        return found
    return [exc]


def _root_cause(exc: BaseException) -> BaseException:
    leaves = [leaf for leaf in _leaves(exc) if not isinstance(leaf, anyio.get_cancelled_exc_class())]
    return leaves[0] if leaves else exc


def _has_fileno(stream: TextIO) -> bool:
    try:
        stream.fileno()
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return False
    return True


async def _pump_stderr(read_fd: int, target: TextIO) -> None:
    """Copy a child's stderr pipe into `target` (used when `target` has no file descriptor)."""
    try:
        while True:
            await anyio.wait_readable(read_fd)
            try:
                data = os.read(read_fd, 65536)
            except BlockingIOError:
                continue
            if not data:
                return
            try:
                target.write(data.decode("utf-8", errors="replace"))
                target.flush()
            except (OSError, ValueError):  # the target was closed under us
                return
    finally:
        os.close(read_fd)


# --------------------------------------------------------------------------- the pool


class DownstreamPool:
    """Sessions to the downstream servers of a Registry; use as `async with DownstreamPool(reg) as pool`."""

    def __init__(
        self,
        registry: Registry,
        *,
        connect_timeout: float = 30.0,
        default_call_timeout: float = 60.0,
        stderr: TextIO | None = None,
        ping_timeout: float = 5.0,
    ) -> None:
        self._registry = registry
        self._connect_timeout = connect_timeout
        self._default_call_timeout = default_call_timeout
        self._stderr = stderr
        self._ping_timeout = ping_timeout
        self._sessions: dict[str, _Session] = {}
        self._owners: set[_Session] = set()
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
                raise self._unknown_tool(server, tool, await self._tools_or_none(session)) from exc
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
                    session, None, self._default_call_timeout, "tools/list", lambda: self._tools(session)
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
        return await self._rpc(session, None, limit, "a ping", lambda: self._probe(session), probe_on_timeout=False)

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

    async def _session(self, server: str, tool: str | None) -> _Session:
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
            connect = self._connector(server, entry, tool)
            self._generation += 1
            session = _Session(server, entry, self._generation)
            self._owners.add(session)
            tg.start_soon(self._own, session, connect)
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
                raise await self._unavailable(session, session.error, tool, starting=True)
            self._sessions[server] = session
            return session

    def _drop(self, session: _Session) -> None:
        """Forget the session and have its owner close it; the next use reconnects."""
        session.dropped = True
        if self._sessions.get(session.name) is session:
            del self._sessions[session.name]
        session.request_close()

    async def _own(self, session: _Session, connect: Callable[[AsyncExitStack, _Session], Awaitable[Client]]) -> None:
        """Owner task: enter the Client, publish it, park until asked to close, exit it (same task)."""
        try:
            with session.scope:
                try:
                    async with AsyncExitStack() as stack:
                        client = await connect(stack, session)
                        session.client = client
                        session.ready.set()
                        logger.info(
                            "downstream server %r connected (%s, pid %s)",
                            session.name,
                            client.protocol_version,
                            session.pid,
                        )
                        await session.close_requested.wait()
                except Exception as exc:
                    if session.client is None:
                        session.error = exc
                    else:
                        logger.debug("closing downstream server %r: %r", session.name, exc)
        finally:
            session.dropped = True
            session.ready.set()
            session.closed.set()
            self._owners.discard(session)

    def _connector(
        self, server: str, entry: ServerEntry, tool: str | None
    ) -> Callable[[AsyncExitStack, _Session], Awaitable[Client]]:
        """Resolve the entry now (env references, at connect time) and return how to connect."""
        try:
            if isinstance(entry, StdioServer):
                params = entry.parameters(server)
                return lambda stack, session: self._connect_stdio(stack, session, params)
            url = entry.resolved_url(server)
            headers = entry.resolved_headers(server)
        except MissingEnvironmentVariable as exc:
            raise DownstreamConfigError(
                f"downstream server {server!r} cannot be started: {exc.message}", server=server, tool=tool
            ) from None
        remote = entry
        return lambda stack, session: self._connect_remote(stack, session, remote, url, headers)

    def _make_client(self, transport: Any, session: _Session) -> Client:
        async def on_message(message: Any) -> None:
            if isinstance(message, mcp_types.ToolListChangedNotification):
                session.tools = None
            elif isinstance(message, Exception):
                logger.debug("downstream server %r transport error: %r", session.name, message)

        return Client(transport, cache=None, client_info=_CLIENT_INFO, message_handler=on_message)

    async def _connect_stdio(self, stack: AsyncExitStack, session: _Session, params: StdioServerParameters) -> Client:
        target = self._stderr if self._stderr is not None else sys.stderr
        errlog: TextIO = target
        if not _has_fileno(target):
            # The child needs a real descriptor for stderr: give it a pipe and copy into `target`.
            errlog = await self._stderr_pipe(stack, target)

        @asynccontextmanager
        async def transport() -> AsyncIterator[Any]:
            context = stdio_client(params, errlog=errlog)
            async with context as streams:
                # stdio_client keeps the process object private; read it off the generator frame
                # to report exit codes and pids. Best effort: without it we only lose detail.
                frame = getattr(getattr(context, "gen", None), "ag_frame", None)
                process = None if frame is None else frame.f_locals.get("process")
                if isinstance(process, anyio.abc.Process):
                    session.process = process
                if errlog is not target:
                    errlog.close()  # the child holds its own copy; EOF then follows the child's exit
                yield streams

        client = self._make_client(transport(), session)
        await stack.enter_async_context(client)
        return client

    async def _stderr_pipe(self, stack: AsyncExitStack, target: TextIO) -> TextIO:
        """A pipe whose write end goes to the child and whose read end is copied into `target`."""
        read_fd, write_fd = os.pipe()
        os.set_blocking(read_fd, False)
        write_end = os.fdopen(write_fd, "w")
        done = anyio.Event()
        read_closed = False

        async def pump() -> None:
            nonlocal read_closed
            try:
                await _pump_stderr(read_fd, target)
            finally:
                read_closed = True
                done.set()

        def close_read_end() -> None:
            if not read_closed:  # the pump never ran
                os.close(read_fd)

        stack.callback(close_read_end)  # runs last, after the pump task group has exited
        pumps = await stack.enter_async_context(anyio.create_task_group())
        pumps.start_soon(pump)

        async def stop() -> None:
            write_end.close()  # our copy; EOF follows once the child (and its children) are gone
            with anyio.move_on_after(1.0):
                await done.wait()
            pumps.cancel_scope.cancel()

        # Registered after the task group: runs before its exit, so the pump is not waited on forever.
        stack.push_async_callback(stop)
        return write_end

    async def _connect_remote(
        self,
        stack: AsyncExitStack,
        session: _Session,
        entry: RemoteServer,
        url: str,
        headers: dict[str, str],
    ) -> Client:
        transport: Any
        if entry.transport == "sse":
            transport = sse_client(url, headers=headers or None, timeout=self._connect_timeout)
        else:
            # Reads are unbounded here: every request carries its own deadline (call/ping timeouts).
            http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(self._connect_timeout, read=None))
            await stack.enter_async_context(http)
            transport = streamable_http_client(url, http_client=http)
        client = self._make_client(transport, session)
        await stack.enter_async_context(client)
        return client

    # ---- requests

    async def _tools(self, session: _Session) -> list[mcp_types.Tool] | None:
        """The session's tool list, fetched once; None when the server cannot list tools."""
        if session.tools is not None:
            return session.tools
        async with session.tools_lock:
            if session.tools is not None:
                return session.tools
            client = session.require_client()
            tools: list[mcp_types.Tool] = []
            cursor: str | None = None
            try:
                for _ in range(_LIST_PAGE_CAP):
                    page = await client.list_tools(cursor=cursor)
                    tools.extend(page.tools)
                    cursor = page.next_cursor
                    if not cursor:
                        break
            except MCPError as exc:
                if exc.code == METHOD_NOT_FOUND:
                    return None
                raise
            session.tools = tools
            return tools

    async def _find_tool(self, session: _Session, tool: str, limit: float) -> mcp_types.Tool | None:
        """The tool's listing entry; None when the server cannot list tools; UnknownTool when it lacks it."""
        for attempt in range(2):
            tools = await self._rpc(session, tool, limit, "tools/list", lambda: self._tools(session))
            if tools is None:
                return None
            for candidate in tools:
                if candidate.name == tool:
                    return candidate
            if attempt == 0:
                # The listing may be stale (servers can add tools): look once more before refusing.
                session.tools = None
        raise self._unknown_tool(session.name, tool, tools)

    async def _tools_or_none(self, session: _Session) -> list[mcp_types.Tool] | None:
        if not session.usable():
            return None
        try:
            with anyio.fail_after(self._ping_timeout):
                return await self._tools(session)
        except Exception:
            return None

    async def _probe(self, session: _Session) -> float:
        """One liveness round trip: `ping` on handshake-era sessions, `tools/list` on 2026+ (no ping)."""
        client = session.require_client()
        started = anyio.current_time()
        if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
            await client.session.send_ping()
        else:
            await client.session.list_tools()
        return anyio.current_time() - started

    async def _rpc(
        self,
        session: _Session,
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
                raise await self._unavailable(session, exc, tool) from exc
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
            raise await self._unavailable(session, exc, tool) from exc
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

    async def _check_after_timeout(self, session: _Session) -> None:
        if not session.usable():
            self._drop(session)
            return
        try:
            with anyio.fail_after(self._ping_timeout):
                await self._probe(session)
        except Exception as exc:
            logger.warning(
                "downstream server %r is not answering (%r); it will be restarted on next use",
                session.name,
                exc,
            )
            self._drop(session)

    # ---- error messages

    def _unknown_tool(self, server: str, tool: str, tools: list[mcp_types.Tool] | None) -> UnknownTool:
        if tools is None:
            listed = "its tools could not be listed"
        elif tools:
            listed = "its tools are: " + ", ".join(sorted(t.name for t in tools))
        else:
            listed = "it offers no tools"
        return UnknownTool(f"downstream server {server!r} has no tool {tool!r}; {listed}", server=server, tool=tool)

    async def _exit_code(self, session: _Session) -> int | None:
        process = session.process
        if process is None:
            return None
        with anyio.move_on_after(_EXIT_CODE_WAIT):
            # Polled: process.wait() also waits for pipe EOF, which a surviving grandchild can hold off.
            while process.returncode is None:
                await anyio.sleep(0.02)
        return process.returncode

    async def _unavailable(
        self, session: _Session, exc: BaseException | None, tool: str | None, *, starting: bool = False
    ) -> DownstreamUnavailable:
        server = session.name
        entry = session.entry
        cause = None if exc is None else _root_cause(exc)
        retryable = True
        if isinstance(entry, StdioServer):
            code = await self._exit_code(session)
            if code is not None and code < 0:
                detail = f"process was killed by signal {-code}"
            elif code is not None:
                detail = f"process exited with code {code}"
            elif isinstance(cause, FileNotFoundError | PermissionError | NotADirectoryError):
                detail = f"cannot run {entry.command!r}: {cause.strerror or cause}"
                if entry.cwd:
                    detail += f" (cwd {entry.cwd!r})"
            elif cause is None:
                detail = "connection was cancelled"
            else:
                detail = f"{_brief(cause)}"
            detail += f" [{entry.describe()}]"
            if code is not None:
                detail += "; see its stderr for details"
            verb = "could not be started" if starting else "is not running"
        else:
            verb = "is not reachable" if starting else "connection was lost"
            status = getattr(getattr(cause, "response", None), "status_code", None)
            if isinstance(status, int) and status in (401, 403, 404):
                retryable = False  # authentication or a wrong URL: retrying will not help
            detail = f"{entry.url}: {_brief(cause) if cause is not None else 'connection was cancelled'}"
        where = f" (tool {tool!r})" if tool else ""
        return DownstreamUnavailable(
            f"downstream server {server!r} {verb}{where}: {detail}",
            server=server,
            tool=tool,
            retryable=retryable,
        )


def _brief(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, MCPError):
        return f"{text} (JSON-RPC error {exc.code})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
