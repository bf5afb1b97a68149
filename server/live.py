"""Live updates: database changes, heard on the process's one LISTEN connection, fanned out to MCP clients.

`LiveBus` is the SDK's `SubscriptionBus` for `subscriptions/listen` (2026-07-28):
the engine's change feed calls `on_change` for every change any process commits,
and the bus hands the matching `ServerEvent`s to the open listen streams, which
filter them by URI. `LegacySubscriptions` serves `resources/subscribe` for clients
on earlier protocol versions from the same bus. Nobody polls: a subscriber costs
a dictionary entry until a change for its URI arrives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from typing import Any

import anyio.lowlevel
from mcp.server.context import ServerRequestContext
from mcp.server.session import ServerSession
from mcp.server.subscriptions import ResourcesListChanged, ResourceUpdated, ServerEvent

from pao_orchestrator.engine import Change
from pao_orchestrator.server.resources import run_uri, step_uri, task_uri
from pao_orchestrator.vocabulary import ChangeKind

log = logging.getLogger(__name__)

Listener = Callable[[ServerEvent], None]


def events_for(change: Change) -> list[ServerEvent]:
    """The MCP events one database change makes: the resources whose JSON it changed, and list-changed
    when a task (a listed resource) appeared or went away."""
    match change.kind:
        case ChangeKind.TASK_CREATED | ChangeKind.TASK_DELETED:
            return [ResourceUpdated(uri=task_uri(change.id)), ResourcesListChanged()]
        case ChangeKind.TASK_CHANGED:
            return [ResourceUpdated(uri=task_uri(change.id))]
        case ChangeKind.RUN:
            return [ResourceUpdated(uri=run_uri(change.id))]
        case ChangeKind.STEP:
            # A step's record is part of its run's JSON too.
            return [
                ResourceUpdated(uri=step_uri(change.id, change.step_id or "")),
                ResourceUpdated(uri=run_uri(change.id)),
            ]
    return []  # pragma: no cover - every kind is matched above


class LiveBus:
    """A `SubscriptionBus` whose events come from Postgres (every replica's changes), not from memory alone."""

    def __init__(self) -> None:
        self._listeners: dict[object, Listener] = {}
        self.delivered = 0

    async def publish(self, event: ServerEvent) -> None:
        """Deliver an in-process event (the database's changes arrive through `on_change`)."""
        self.deliver(event)
        await anyio.lowlevel.checkpoint()

    def subscribe(self, listener: Listener) -> Callable[[], None]:
        token = object()
        self._listeners[token] = listener

        def unsubscribe() -> None:
            self._listeners.pop(token, None)

        return unsubscribe

    def deliver(self, event: ServerEvent) -> None:
        self.delivered += 1
        for listener in list(self._listeners.values()):
            try:
                listener(event)
            except Exception:  # fan-out boundary: one stream's failure must not starve the others
                log.exception("subscription listener raised; continuing")

    def on_change(self, change: Change) -> None:
        for event in events_for(change):
            self.deliver(event)


def connection_key(ctx: ServerRequestContext[Any, Any]) -> Hashable:
    """Which client connection a request came on, from what the transport shows publicly: the
    streamable HTTP session id header, the SSE session_id query parameter; stdio has one connection."""
    request = ctx.request
    headers = getattr(request, "headers", None)
    if headers is not None:
        session_id = headers.get("mcp-session-id")
        if session_id:
            return ("http", session_id)
    query = getattr(request, "query_params", None)
    if query is not None:
        session_id = query.get("session_id")
        if session_id:
            return ("sse", session_id)
    return ("stdio",)


class LegacySubscriptions:
    """`resources/subscribe` (protocol versions before 2026-07-28): per connection, the URIs it follows."""

    def __init__(self, bus: LiveBus) -> None:
        self._sessions: dict[Hashable, ServerSession] = {}
        self._uris: dict[str, set[Hashable]] = {}
        self._sending: set[asyncio.Task[None]] = set()
        bus.subscribe(self._on_event)

    def subscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        key = connection_key(ctx)
        # Any request's session sends on the connection's own channel when no request id is given.
        self._sessions[key] = ctx.session
        self._uris.setdefault(uri, set()).add(key)

    def unsubscribe(self, ctx: ServerRequestContext[Any, Any], uri: str) -> None:
        keys = self._uris.get(uri)
        if keys is not None:
            keys.discard(connection_key(ctx))
            if not keys:
                del self._uris[uri]

    def count(self) -> int:
        return sum(len(keys) for keys in self._uris.values())

    def _forget(self, key: Hashable) -> None:
        self._sessions.pop(key, None)
        for uri in list(self._uris):
            self._uris[uri].discard(key)
            if not self._uris[uri]:
                del self._uris[uri]

    def _on_event(self, event: ServerEvent) -> None:
        if not isinstance(event, ResourceUpdated):
            return
        for key in list(self._uris.get(event.uri, ())):
            session = self._sessions.get(key)
            if session is not None:
                task = asyncio.ensure_future(self._send(key, session, event.uri))
                self._sending.add(task)
                task.add_done_callback(self._sending.discard)

    async def _send(self, key: Hashable, session: ServerSession, uri: str) -> None:
        try:
            await session.send_resource_updated(uri)
        except Exception as exc:  # the client went away: stop following for it
            log.debug("resources/updated to %s failed (%s); dropping its subscriptions", key, exc)
            self._forget(key)
