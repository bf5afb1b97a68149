"""The MCP tools of events (publish_event, list_events, get_event) and the resource pao://events/{event_id}.

Thin adapters like server/tools.py: one engine call each, a pydantic model back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from pydantic import BaseModel, Field, Strict

from pao_orchestrator.engine import Agent, Engine, Event, PublishedEvent
from pao_orchestrator.server.metadata import READ, WRITE, Cursor, Limit, tool_errors

EventId = Annotated[int, Strict(), Field(ge=1, description="The event's id.")]


class EventList(BaseModel):
    events: list[Event]
    next_cursor: str | None


def register_event_tools(mcp: MCPServer[Any], engine: Engine, caller: Callable[[], Agent]) -> None:
    """Register publish_event, list_events, get_event and the event resource."""

    @mcp.tool(name="publish_event", annotations=WRITE)
    @tool_errors
    async def publish_event(
        topic: Annotated[str, Field(min_length=1, max_length=256, description="Dot-separated, e.g. 'email.received'.")],
        data: Annotated[dict[str, Any], Field(description="Any JSON object; tasks read it as ${event.data...}.")],
        dedupe_key: Annotated[
            str | None, Field(max_length=500, description="Same topic and key again within 24 h: no new event.")
        ] = None,
        source: Annotated[str | None, Field(max_length=200, description="Who sent it; default: you.")] = None,
    ) -> PublishedEvent:
        """Publish an event: every active event task whose topic pattern (and filter) matches it starts a run,
        in the same transaction. Returns the event id and the runs started."""
        return await engine.publish_event(caller(), topic=topic, data=data, dedupe_key=dedupe_key, source=source)

    @mcp.tool(name="list_events", annotations=READ)
    @tool_errors
    async def list_events(
        topic: Annotated[str | None, Field(description="A topic, or a pattern: 'home.*', '*'.")] = None,
        since: Annotated[str | None, Field(description="ISO 8601 instant with offset; inclusive.")] = None,
        until: Annotated[str | None, Field(description="ISO 8601 instant with offset; exclusive.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> EventList:
        """List events, newest first, by topic and time. Runs ending publish run.succeeded, run.failed and
        run.cancelled here too."""
        events, next_cursor = await engine.list_events(
            topic=topic, since=since, until=until, limit=limit, cursor=cursor
        )
        return EventList(events=events, next_cursor=next_cursor)

    @mcp.tool(name="get_event", annotations=READ)
    @tool_errors
    async def get_event(event_id: EventId) -> Event:
        """Get one event with the runs it started."""
        return await engine.get_event(event_id)

    @mcp.resource("pao://events/{event_id}", name="event", mime_type="application/json")
    async def event_resource(event_id: str) -> str:
        """An event as get_event returns it."""
        return (await engine.get_event(int(event_id))).model_dump_json()
