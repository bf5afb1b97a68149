"""Downstream servers: the mcp.json registry and the pool of MCP client sessions pipeline steps call through.

The door of the downstream room: other rooms import only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.downstream.errors import (
    DownstreamConfigError,
    DownstreamError,
    DownstreamRejected,
    DownstreamTimeout,
    DownstreamUnavailable,
    UnknownServer,
    UnknownTool,
)
from pao_orchestrator.engine.downstream.pool import DownstreamPool
from pao_orchestrator.engine.downstream.registry import (
    Registry,
    RemoteServer,
    ServerEntry,
    StdioServer,
    load_registry,
)
from pao_orchestrator.engine.downstream.tool_output import ToolListing, ToolOutput

__all__ = [
    "DownstreamConfigError",
    "DownstreamError",
    "DownstreamPool",
    "DownstreamRejected",
    "DownstreamTimeout",
    "DownstreamUnavailable",
    "Registry",
    "RemoteServer",
    "ServerEntry",
    "StdioServer",
    "ToolListing",
    "ToolOutput",
    "UnknownServer",
    "UnknownTool",
    "load_registry",
]
