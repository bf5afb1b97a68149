"""Events as agents see them: publish_event, list_events, get_event."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, Field

from pao_orchestrator.engine import access, audit
from pao_orchestrator.engine.models import Agent
from pao_orchestrator.engine.runtime import EventLimits, NewEvent, Published, check_event, publish
from pao_orchestrator.errors import InvalidArgument, NotFound
from pao_orchestrator.store import EventRecord, EventRun
from pao_orchestrator.store import events as event_store
from pao_orchestrator.vocabulary import RunStatus


class StartedRun(BaseModel):
    run_id: UUID
    task_id: UUID
    status: RunStatus


class Event(BaseModel):
    """A stored event."""

    id: int
    topic: str
    data: dict[str, Any]
    source: str
    dedupe_key: str | None
    depth: int = Field(description="Links of the event chain that led here (0: published from outside).")
    created_at: datetime
    runs: list[StartedRun] | None = Field(default=None, description="Runs it started (get_event).")


class PublishedEvent(BaseModel):
    event_id: int
    duplicate: bool = Field(description="True: dedupe_key matched an earlier event; nothing new started.")
    runs: list[StartedRun]


def _runs(runs: list[EventRun]) -> list[StartedRun]:
    return [StartedRun(run_id=r.id, task_id=r.task_id, status=r.status) for r in runs]


def to_event(row: EventRecord, runs: list[EventRun] | None = None) -> Event:
    return Event.model_validate({**row.as_dict(), "runs": None if runs is None else _runs(runs)})


async def publish_event(
    db: asyncpg.Pool,
    caller: Agent,
    *,
    topic: str,
    data: dict[str, Any],
    dedupe_key: str | None,
    source: str | None,
    limits: EventLimits,
) -> PublishedEvent:
    """Store the event, start its runs and audit it, atomically (runtime.publish: one statement in the
    common case)."""
    source = source if source is not None else f"agent:{caller.name}"
    check_event(topic, data, source, dedupe_key, limits=limits)
    new = NewEvent(topic=topic, data=dict(data), source=source, dedupe_key=dedupe_key, published_by=caller.id)
    async with db.acquire() as conn:
        # The entry is written with the event, in the same statement; a duplicate is audited apart.
        done: Published = await publish(
            conn,
            new,
            limits=limits,
            audit=lambda event_id: audit.entry(
                caller, "publish_event", "event", str(event_id), {"topic": topic, "duplicate": False}
            ),
        )
        if done.duplicate:
            await audit.record(
                conn,
                caller,
                "publish_event",
                "event",
                str(done.event.id),
                {"topic": topic, "duplicate": True, "runs": len(done.runs)},
            )
    return PublishedEvent(event_id=done.event.id, duplicate=done.duplicate, runs=_runs(done.runs))


async def get_event(db: asyncpg.Pool, caller: Agent, event_id: int) -> Event:
    """One event with the runs it started. An agent without admin sees only the events it published (another
    agent's answers as a missing one) and, of their runs, those of its own tasks."""
    async with db.acquire() as conn:
        row = await event_store.get(conn, event_id)
        if not caller.sees(row.published_by):
            raise NotFound(f"event {event_id} does not exist; list_events shows recent events")
        runs = await event_store.runs_of(conn, event_id, created_by=access.owner_filter(caller))
    return to_event(row, runs)


def _instant(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidArgument(name, f"{value!r} is not an ISO 8601 instant; e.g. '2026-03-30T08:00:00+03:00'") from None
    if parsed.tzinfo is None:
        raise InvalidArgument(name, f"{value!r} has no UTC offset; add one, e.g. '{value}Z'")
    return parsed


async def list_events(
    db: asyncpg.Pool,
    caller: Agent,
    *,
    topic: str | None,
    since: str | None,
    until: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Event], str | None]:
    """Newest first; `topic` is a topic or a pattern ('home.*', '*')."""
    exact: str | None = topic
    prefix: str | None = None
    if topic == "*":
        exact = None
    elif topic is not None and topic.endswith(".*"):
        exact, prefix = None, topic[:-1]
    before: int | None = None
    if cursor:
        if not cursor.isdigit():
            raise InvalidArgument("cursor", "is not a cursor this server returned; omit it to start from the newest")
        before = int(cursor)
    async with db.acquire() as conn:
        rows = await event_store.list_page(
            conn,
            topic=exact,
            prefix=prefix,
            since=_instant(since, "since"),
            until=_instant(until, "until"),
            before_id=before,
            limit=limit + 1,
            published_by=access.owner_filter(caller),
        )
    more = len(rows) > limit
    rows = rows[:limit]
    return [to_event(r) for r in rows], str(rows[-1].id) if more and rows else None
