"""How a failed call to a downstream MCP server is reported: DownstreamError and its subclasses.

See `engine.downstream` for the pool that raises them.
"""

from __future__ import annotations

import mcp_types
from mcp.shared.exceptions import MCPError

from pao_orchestrator.errors import StepError


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


def unknown_tool_error(server: str, tool: str, tools: list[mcp_types.Tool] | None) -> UnknownTool:
    if tools is None:
        listed = "its tools could not be listed"
    elif tools:
        listed = "its tools are: " + ", ".join(sorted(t.name for t in tools))
    else:
        listed = "it offers no tools"
    return UnknownTool(f"downstream server {server!r} has no tool {tool!r}; {listed}", server=server, tool=tool)


def brief(exc: BaseException) -> str:
    text = str(exc).strip()
    if isinstance(exc, MCPError):
        return f"{text} (JSON-RPC error {exc.code})"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
