"""One session to one downstream server: its owner task, its tool listing, and why it died.

Session ownership. The SDK's `Client` is built from anyio task groups and
cancel scopes, which must be entered and exited by the same task. So every
session has an *owner task*, started in the pool's task group, that enters the
`Client`, publishes it, and parks until asked to close; callers only send
requests through the published client. Closing a session means setting its
`close_requested` event (or cancelling its scope while it is still connecting):
the owner then exits the `Client` in its own task, which for stdio closes the
child's stdin and escalates to SIGTERM/SIGKILL of its process group.

See `engine.downstream` for the pool that opens, reuses and drops sessions.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import anyio
import anyio.abc
import mcp_types
from mcp import Client
from mcp.shared.exceptions import MCPError
from mcp_types import METHOD_NOT_FOUND
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS

from pao_orchestrator.engine.downstream.errors import DownstreamUnavailable, brief
from pao_orchestrator.engine.downstream.registry import ServerEntry, StdioServer

logger = logging.getLogger("pao_orchestrator.engine.downstream")

_EXIT_CODE_WAIT = 1.0
"""How long to wait for a dead child's exit status, to name it in the error."""

_LIST_PAGE_CAP = 100
"""tools/list pages followed at most, so a paginator that never ends cannot hang a call."""


class Session:
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


async def own_session(
    session: Session, connect: Callable[[AsyncExitStack, Session], Awaitable[Client]], owners: set[Session]
) -> None:
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
        owners.discard(session)


async def list_session_tools(session: Session) -> list[mcp_types.Tool] | None:
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


async def probe(session: Session) -> float:
    """One liveness round trip: `ping` on handshake-era sessions, `tools/list` on 2026+ (no ping)."""
    client = session.require_client()
    started = anyio.current_time()
    if client.protocol_version in HANDSHAKE_PROTOCOL_VERSIONS:
        await client.session.send_ping()
    else:
        await client.session.list_tools()
    return anyio.current_time() - started


async def _exit_code(session: Session) -> int | None:
    process = session.process
    if process is None:
        return None
    with anyio.move_on_after(_EXIT_CODE_WAIT):
        # Polled: process.wait() also waits for pipe EOF, which a surviving grandchild can hold off.
        while process.returncode is None:
            await anyio.sleep(0.02)
    return process.returncode


async def unavailable_error(
    session: Session, exc: BaseException | None, tool: str | None, *, starting: bool = False
) -> DownstreamUnavailable:
    server = session.name
    entry = session.entry
    cause = None if exc is None else _root_cause(exc)
    retryable = True
    if isinstance(entry, StdioServer):
        code = await _exit_code(session)
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
            detail = f"{brief(cause)}"
        detail += f" [{entry.describe()}]"
        if code is not None:
            detail += "; see its stderr for details"
        verb = "could not be started" if starting else "is not running"
    else:
        verb = "is not reachable" if starting else "connection was lost"
        status = getattr(getattr(cause, "response", None), "status_code", None)
        if isinstance(status, int) and status in (401, 403, 404):
            retryable = False  # authentication or a wrong URL: retrying will not help
        detail = f"{entry.url}: {brief(cause) if cause is not None else 'connection was cancelled'}"
    where = f" (tool {tool!r})" if tool else ""
    return DownstreamUnavailable(
        f"downstream server {server!r} {verb}{where}: {detail}",
        server=server,
        tool=tool,
        retryable=retryable,
    )
