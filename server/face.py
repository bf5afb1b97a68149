"""The parts of the MCP face the SDK's `MCPServer` does not offer through its public surface.

`MCPServer` serves `resources/list` without paging and has no hook for the
pre-2026 `resources/subscribe`; the low-level `Server` it wraps takes any request
handler. This module is the one place that reaches it (`MCPServer._lowlevel_server`,
as the SDK's own `Client` does), and `tests/server/test_face.py` fails loudly if
the SDK moves it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server.context import ServerRequestContext
from mcp.server.lowlevel.server import Server
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceNotFoundError
from mcp.shared.exceptions import MCPError
from mcp_types import (
    INVALID_PARAMS,
    EmptyResult,
    ListResourcesResult,
    PaginatedRequestParams,
    SubscribeRequestParams,
    SubscriptionsListenRequestParams,
    UnsubscribeRequestParams,
)

from pao_orchestrator.server.live import LegacySubscriptions

ListPage = Callable[[str | None], Awaitable[ListResourcesResult]]
Visible = Callable[[str], Awaitable[None]]
"""Raises ResourceNotFoundError when the caller may not read the resource at this URI."""


def lowlevel(mcp: MCPServer[Any]) -> Server[Any]:
    """The SDK's low-level server inside `mcp` (private in SDK 2.3; checked by a test)."""
    server = getattr(mcp, "_lowlevel_server", None)
    if not isinstance(server, Server):
        raise RuntimeError(
            "mcp.server.mcpserver.MCPServer no longer holds its low-level Server as _lowlevel_server; "
            "pao_orchestrator.server.face needs updating for this SDK version"
        )
    return server


def serve_paged_resource_list(mcp: MCPServer[Any], list_page: ListPage) -> None:
    """Serve `resources/list` a page at a time (the cursor is the client's)."""

    async def handler(_ctx: ServerRequestContext[Any, Any], params: PaginatedRequestParams) -> ListResourcesResult:
        return await list_page(params.cursor if params else None)

    lowlevel(mcp).add_request_handler("resources/list", PaginatedRequestParams, handler)


def serve_legacy_subscriptions(mcp: MCPServer[Any], subscriptions: LegacySubscriptions, visible: Visible) -> None:
    """Serve `resources/subscribe` and `resources/unsubscribe` (and so advertise `subscribe` to clients of
    protocol versions before 2026-07-28, which have no `subscriptions/listen`). Subscribing to a resource
    the caller may not read is refused as "not found", like reading it."""

    async def subscribe(ctx: ServerRequestContext[Any, Any], params: SubscribeRequestParams) -> EmptyResult:
        await _check_visible(visible, str(params.uri))
        subscriptions.subscribe(ctx, str(params.uri))
        return EmptyResult()

    async def unsubscribe(ctx: ServerRequestContext[Any, Any], params: UnsubscribeRequestParams) -> EmptyResult:
        subscriptions.unsubscribe(ctx, str(params.uri))
        return EmptyResult()

    server = lowlevel(mcp)
    server.add_request_handler("resources/subscribe", SubscribeRequestParams, subscribe)
    server.add_request_handler("resources/unsubscribe", UnsubscribeRequestParams, unsubscribe)


async def _check_visible(visible: Visible, uri: str) -> None:
    try:
        await visible(uri)
    except ResourceNotFoundError as exc:
        raise MCPError(INVALID_PARAMS, str(exc)) from None


def guard_listen(mcp: MCPServer[Any], visible: Visible) -> None:
    """Put the same check in front of the SDK's own `subscriptions/listen` handler: a listen naming a
    resource the caller may not read is refused before the stream opens, as "not found"."""
    server = lowlevel(mcp)
    entry = server.get_request_handler("subscriptions/listen")
    if entry is None:  # subscriptions switched off: nothing to guard
        return
    inner = entry.handler

    async def listen(ctx: ServerRequestContext[Any, Any], params: SubscriptionsListenRequestParams) -> Any:
        for uri in params.notifications.resource_subscriptions or ():
            await _check_visible(visible, str(uri))
        return await inner(ctx, params)

    server.add_request_handler("subscriptions/listen", SubscriptionsListenRequestParams, listen)
