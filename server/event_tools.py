"""The MCP tools of events: publish_event, list_events, get_event (the resource pao://events/{event_id} is
in server/resources.py).

Thin adapters like server/tools.py: one engine call each, a pydantic model back.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from pydantic import BaseModel, Field, Strict

from pao_orchestrator.engine import Agent, Engine, Event, PublishedEvent
from pao_orchestrator.server.metadata import READ, WRITE, Cursor, Limit, tool_errors
from pao_orchestrator.server.toolset import ToolSet

EventId = Annotated[int, Strict(), Field(ge=1, description="The event's id.")]


class EventList(BaseModel):
    events: list[Event]
    next_cursor: str | None


def register_event_tools(tools: ToolSet, engine: Engine, caller: Callable[[], Agent]) -> None:
    """Register publish_event, list_events and get_event."""

    @tools.tool(name="publish_event", title="Publish event", annotations=WRITE)
    @tool_errors
    async def publish_event(
        topic: Annotated[str, Field(min_length=1, max_length=256, description="Dot-separated, e.g. 'email.received'.")],
        data: Annotated[dict[str, Any], Field(description="Any JSON object; tasks read it as ${event.data...}.")],
        dedupe_key: Annotated[
            str | None, Field(max_length=500, description="Same topic and key again within 24 h: no new event.")
        ] = None,
        source: Annotated[str | None, Field(max_length=200, description="Who sent it; default: you.")] = None,
    ) -> PublishedEvent:
        """Publish an event; every active event task whose pattern and filter match starts a run."""
        return await engine.publish_event(caller(), topic=topic, data=data, dedupe_key=dedupe_key, source=source)

    @tools.tool(name="list_events", title="List events", annotations=READ)
    @tool_errors
    async def list_events(
        topic: Annotated[str | None, Field(description="A topic, or a pattern: 'home.*', '*'.")] = None,
        since: Annotated[str | None, Field(description="ISO 8601 instant with offset; inclusive.")] = None,
        until: Annotated[str | None, Field(description="ISO 8601 instant with offset; exclusive.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> EventList:
        """Events you published, newest first (run ends publish run.succeeded/failed/cancelled)."""
        events, next_cursor = await engine.list_events(
            caller(), topic=topic, since=since, until=until, limit=limit, cursor=cursor
        )
        return EventList(events=events, next_cursor=next_cursor)

    @tools.tool(name="get_event", title="Get event", annotations=READ)
    @tool_errors
    async def get_event(event_id: EventId) -> Event:
        """One event with the runs it started."""
        return await engine.get_event(caller(), event_id)
