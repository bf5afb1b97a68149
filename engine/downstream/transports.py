"""Connecting a downstream session: stdio (with its stderr piped where we want it), SSE or streamable HTTP.

Downstream stderr goes to the pool's `stderr` (default `sys.stderr`), never to
our stdout, which may itself be an MCP stdio channel.
"""

from __future__ import annotations

import importlib.metadata
import io
import logging
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, TextIO

import anyio
import anyio.abc
import httpx2
import mcp_types
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from pao_orchestrator.contracts import APP_NAME, DISTRIBUTION
from pao_orchestrator.engine.downstream.errors import DownstreamConfigError
from pao_orchestrator.engine.downstream.registry import (
    MissingEnvironmentVariable,
    RemoteServer,
    ServerEntry,
    StdioServer,
)
from pao_orchestrator.engine.downstream.sessions import Session

logger = logging.getLogger("pao_orchestrator.engine.downstream")
stderr_logger = logging.getLogger("pao_orchestrator.engine.downstream.stderr")


def _client_info() -> mcp_types.Implementation:
    try:
        version = importlib.metadata.version(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        version = "0"
    return mcp_types.Implementation(name=APP_NAME, version=version)


_CLIENT_INFO = _client_info()


class LogLines(io.TextIOBase):
    """A text stream that logs each line written to it (a downstream server's stderr), so the process's
    stderr stays one format (JSON lines or text) and secrets in it are masked like any log line."""

    def __init__(self, server: str) -> None:
        super().__init__()
        self._server = server
        self._partial = ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        if len(self._partial) > 65536:  # a line without end: log what came so far
            lines.append(self._partial)
            self._partial = ""
        for line in lines:
            if line.strip():
                stderr_logger.info("[%s] %s", self._server, line.rstrip())
        return len(text)

    def close(self) -> None:
        if self._partial.strip():
            stderr_logger.info("[%s] %s", self._server, self._partial.rstrip())
        self._partial = ""
        super().close()


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


def connector(
    server: str,
    entry: ServerEntry,
    tool: str | None,
    *,
    stderr: TextIO | None,
    connect_timeout: float,
    environ: Mapping[str, str],
) -> Callable[[AsyncExitStack, Session], Awaitable[Client]]:
    """Resolve the entry now (env references in `environ`, at connect time) and return how to connect."""
    try:
        if isinstance(entry, StdioServer):
            params = entry.parameters(server, environ)
            return lambda stack, session: _connect_stdio(stack, session, params, stderr)
        url = entry.resolved_url(server, environ)
        headers = entry.resolved_headers(server, environ)
    except MissingEnvironmentVariable as exc:
        raise DownstreamConfigError(
            f"downstream server {server!r} cannot be started: {exc.message}", server=server, tool=tool
        ) from None
    remote = entry
    return lambda stack, session: _connect_remote(stack, session, remote, url, headers, connect_timeout)


def _make_client(transport: Any, session: Session) -> Client:
    async def on_message(message: Any) -> None:
        if isinstance(message, mcp_types.ToolListChangedNotification):
            session.tools = None
        elif isinstance(message, Exception):
            logger.debug("downstream server %r transport error: %r", session.name, message)

    return Client(transport, cache=None, client_info=_CLIENT_INFO, message_handler=on_message)


async def _connect_stdio(
    stack: AsyncExitStack, session: Session, params: StdioServerParameters, stderr: TextIO | None
) -> Client:
    target = stderr if stderr is not None else sys.stderr
    errlog: TextIO = target
    if not _has_fileno(target):
        # The child needs a real descriptor for stderr: give it a pipe and copy into `target`.
        errlog = await _stderr_pipe(stack, target)

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

    client = _make_client(transport(), session)
    await stack.enter_async_context(client)
    return client


async def _stderr_pipe(stack: AsyncExitStack, target: TextIO) -> TextIO:
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
    stack: AsyncExitStack,
    session: Session,
    entry: RemoteServer,
    url: str,
    headers: dict[str, str],
    connect_timeout: float,
) -> Client:
    transport: Any
    if entry.transport == "sse":
        transport = sse_client(url, headers=headers or None, timeout=connect_timeout)
    else:
        # Reads are unbounded here: every request carries its own deadline (call/ping timeouts).
        http = httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(connect_timeout, read=None))
        await stack.enter_async_context(http)
        transport = streamable_http_client(url, http_client=http)
    client = _make_client(transport, session)
    await stack.enter_async_context(client)
    return client
