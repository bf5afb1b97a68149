"""Events: what may be published, which event tasks an event starts, and the runs it starts.

`publish` stores an event and matches it atomically (in one statement, or in the caller's
transaction), so an acknowledged event has its runs (or it does not exist). Events stored by the
database itself (a run's end, see the `runs_end_events` trigger) are matched by `match_pending`,
which the workers' `Matcher` calls when they hear of them; either way the event and its runs
commit together.

Matching is indexed: the task patterns an event can match are its topic, each of its prefixes
followed by `.*`, and `*`; the store looks those up in the partial index on event tasks, so the
cost of a publish does not grow with the number of event tasks on other topics.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import asyncpg

from pao_orchestrator.contracts import EVENTS_CHANNEL, MAX_CHAIN_DEPTH, RUN_TOPIC_PREFIX
from pao_orchestrator.engine.runtime import storable
from pao_orchestrator.engine.runtime.enqueuing import Keys, enqueue, render_keys, serial_key
from pao_orchestrator.engine.templating import TemplateError, needs_isolation, render
from pao_orchestrator.errors import InvalidArgument
from pao_orchestrator.store import (
    DATABASE_ERRORS,
    EventRecord,
    EventRun,
    EventRunBatch,
    EventTask,
    Listener,
    NewAuditEntry,
)
from pao_orchestrator.store import events as event_store
from pao_orchestrator.vocabulary import OverlapPolicy, RunStatus, Trigger

log = logging.getLogger(__name__)

MAX_TOPIC_LENGTH: Final = 256
MAX_SOURCE_LENGTH: Final = 200
MAX_DEDUPE_KEY_LENGTH: Final = 500
_TOPIC: Final = re.compile(r"[A-Za-z0-9_:-]+(?:\.[A-Za-z0-9_:-]+)*", re.ASCII)


@dataclass(frozen=True)
class EventLimits:
    """Bounds on what is published: the data's size, and how long a dedupe_key holds."""

    max_data_bytes: int = 65_536
    dedupe_seconds: float = 86_400.0


@dataclass(frozen=True)
class NewEvent:
    """An event to publish, checked by `check_event`."""

    topic: str
    data: dict[str, Any]
    source: str
    dedupe_key: str | None = None
    published_by: Any = None
    depth: int = 0


@dataclass(frozen=True)
class Published:
    """A stored event and the runs it started; `duplicate` when its dedupe_key found an earlier one."""

    event: EventRecord
    runs: list[EventRun] = field(default_factory=list)
    duplicate: bool = False


def check_topic(topic: Any, field_name: str = "topic", *, reserved_ok: bool = False) -> str:
    """A topic: dot-separated segments of letters, digits, `_`, `:` and `-`; `run.` is pao's own."""
    hint = "e.g. 'email.received'; segments of letters, digits, _ : - separated by dots"
    if not isinstance(topic, str) or not topic:
        raise InvalidArgument(field_name, f"must be a non-empty string; {hint}")
    if len(topic) > MAX_TOPIC_LENGTH:
        raise InvalidArgument(field_name, f"is {len(topic)} characters long; at most {MAX_TOPIC_LENGTH}")
    if not _TOPIC.fullmatch(topic):
        raise InvalidArgument(field_name, f"{topic[:80]!r} is not a topic; {hint} (no wildcards, no empty segment)")
    if not reserved_ok and topic.startswith(RUN_TOPIC_PREFIX):
        raise InvalidArgument(
            field_name, f"topics starting with {RUN_TOPIC_PREFIX!r} are published by pao when runs end; choose another"
        )
    return topic


def check_event(
    topic: Any, data: Any, source: Any, dedupe_key: Any, *, limits: EventLimits, source_field: str = "source"
) -> None:
    """Refuse a malformed or oversized event, naming the field and the limit."""
    check_topic(topic)
    if not isinstance(data, Mapping):
        raise InvalidArgument("data", f"must be a JSON object, got {type(data).__name__}")
    problem = storable.problem(dict(data), limits.max_data_bytes, limit_name="PAO_MAX_EVENT_BYTES")
    if problem is not None:
        raise InvalidArgument("data", problem)
    if not isinstance(source, str) or not source or len(source) > MAX_SOURCE_LENGTH:
        raise InvalidArgument(source_field, f"must be text of 1..{MAX_SOURCE_LENGTH} characters")
    if storable.problem(source, MAX_SOURCE_LENGTH + 2) is not None:
        raise InvalidArgument(source_field, "contains a character that cannot be stored")
    if dedupe_key is not None:
        if not isinstance(dedupe_key, str) or not dedupe_key or len(dedupe_key) > MAX_DEDUPE_KEY_LENGTH:
            raise InvalidArgument("dedupe_key", f"must be text of 1..{MAX_DEDUPE_KEY_LENGTH} characters")
        if storable.problem(dedupe_key, MAX_DEDUPE_KEY_LENGTH + 2) is not None:
            raise InvalidArgument("dedupe_key", "contains a character that cannot be stored")


def topic_patterns(topic: str) -> list[str]:
    """Every task pattern that matches `topic`: itself, each prefix + '.*', and '*' (except on pao's
    own `run.` topics: a task on '*' would otherwise fire on its own runs' ends)."""
    parts = topic.split(".")
    patterns = [topic, *(".".join(parts[:n]) + ".*" for n in range(1, len(parts)))]
    if not topic.startswith(RUN_TOPIC_PREFIX):
        patterns.append("*")
    return patterns


def pattern_matches(pattern: str, topic: str) -> bool:
    """`email.received` matches itself; `home.*` every topic under `home.`; `*` every topic but `run.*`."""
    if pattern == "*":
        return not topic.startswith(RUN_TOPIC_PREFIX)
    if pattern.endswith(".*"):
        return topic.startswith(pattern[:-1])
    return pattern == topic


def event_view(event: EventRecord) -> dict[str, Any]:
    """`${event...}` in templates, and an event as the outgoing stream and run triggers carry it."""
    return {
        "id": event.id,
        "topic": event.topic,
        "data": event.data,
        "source": event.source,
        "dedupe_key": event.dedupe_key,
        "depth": event.depth,
        "created_at": event.created_at.isoformat(),
    }


class ChainTooDeep(Exception):
    """An event is MAX_CHAIN_DEPTH links down a chain: the runs it would start fail instead."""


def _passes(task: EventTask, view: dict[str, Any]) -> bool:
    """Whether the task's filter renders truthy for this event; TemplateError when it cannot render."""
    assert task.filter is not None
    if needs_isolation(task.filter):
        raise TemplateError(f"filter: {task.filter!r} is not a simple template; update_task with a simpler filter")
    context = {"event": view, "task": {"id": str(task.id), "title": task.title}, "now": view["created_at"]}
    return bool(render(task.filter, context, field="filter", limit=10_000))


@dataclass
class _Plan:
    """The runs a match starts: most in one statement (`batch`), those of tasks with a dedupe_key one
    by one, through the dedupe rule of every enqueue."""

    batch: EventRunBatch = field(default_factory=EventRunBatch)
    one_by_one: list[tuple[EventTask, dict[str, Any], Keys, EventRecord]] = field(default_factory=list)


def _plan(events: list[EventRecord], tasks: list[EventTask]) -> _Plan:
    """Which of `tasks` each event starts, and how (pure: filters and keys render here).

    A task whose filter or keys cannot be rendered gets a `failed` run saying why (it publishes
    run.failed, one link further down the chain); an event at MAX_CHAIN_DEPTH gets `failed` runs
    marked `chain_stopped`, which publish nothing: a loop stops there.
    """
    plan = _Plan()
    for event in events:
        view = event_view(event)
        trigger_data = {"event": view}
        for task in tasks:
            if not pattern_matches(task.schedule_expr, event.topic):
                continue
            try:
                if task.filter is not None and not _passes(task, view):
                    continue
                if event.depth >= MAX_CHAIN_DEPTH:
                    raise ChainTooDeep(
                        f"event {event.id} ({event.topic}) is link {event.depth + 1} of an event chain; chains stop "
                        f"at {MAX_CHAIN_DEPTH} links (does this task fire on its own outcome?); this run did not start"
                    )
                queue = task.overlap_policy == OverlapPolicy.QUEUE
                keys = render_keys(
                    task,
                    Trigger.EVENT,
                    trigger_data,
                    event.created_at,
                    default_concurrency_key=serial_key(task.id, task.overlap_policy) if queue else None,
                )
            except ChainTooDeep as exc:
                # Marked so that this refusal publishes no run.failed: it is where the chain ends.
                stopped = {**trigger_data, "chain_stopped": True}
                plan.batch.add(task, RunStatus.FAILED, stopped, event.id, error=storable.text(str(exc)))
                continue
            except TemplateError as exc:
                plan.batch.add(task, RunStatus.FAILED, trigger_data, event.id, error=storable.text(str(exc)))
                continue
            if keys.dedupe is not None:
                plan.one_by_one.append((task, trigger_data, keys, event))
            else:
                plan.batch.add(task, RunStatus.QUEUED, trigger_data, event.id, concurrency_key=keys.concurrency)
    return plan


async def _start_one_by_one(conn: asyncpg.Connection, plan: _Plan, started: dict[int, list[EventRun]]) -> None:
    for task, trigger_data, keys, event in plan.one_by_one:
        row = await enqueue(
            conn,
            task,
            trigger=Trigger.EVENT,
            trigger_data=trigger_data,
            scheduled_for=event.created_at,
            created_by=None,
            keys=keys,
            event_id=event.id,
        )
        started[event.id].append(EventRun(row.id, row.task_id, row.status, event.id))


async def match(conn: asyncpg.Connection, events: list[EventRecord]) -> dict[int, list[EventRun]]:
    """Start the runs of every active event task each of the stored `events` matches (see `_plan`);
    the caller owns the transaction."""
    patterns = sorted({p for e in events for p in topic_patterns(e.topic)})
    tasks = await event_store.tasks_for_patterns(conn, patterns)
    started: dict[int, list[EventRun]] = {e.id: [] for e in events}
    if not tasks:
        return started
    plan = _plan(events, tasks)
    for run in await event_store.insert_runs(conn, plan.batch):
        started[run.event_id].append(run)
    await _start_one_by_one(conn, plan, started)
    return started


@contextlib.asynccontextmanager
async def _atomic(conn: asyncpg.Connection) -> AsyncIterator[None]:
    """A transaction, unless the caller already holds one (then theirs: no savepoint round trips)."""
    if conn.is_in_transaction():
        yield
    else:
        async with conn.transaction():
            yield


async def publish(
    conn: asyncpg.Connection,
    new: NewEvent,
    *,
    limits: EventLimits,
    audit: Callable[[int], NewAuditEntry] | None = None,
) -> Published:
    """Store an event and start its runs, atomically: within the caller's transaction if it holds one.

    A dedupe_key seen on the same topic within `limits.dedupe_seconds` returns that earlier event
    and starts nothing; concurrent publishes of one key are serialised, so exactly one stores it.
    `audit(event_id)` gives the entry written with a stored event (none for a duplicate).

    Two statements in the common case (no dedupe_key, no matching task with one): prepare_event
    reserves the id and time and reads the tasks, store_event writes the event, its runs and its
    audit entry at once. A publish is most of the cost of an event's runs, and round trips most of
    a publish's.
    """
    if new.dedupe_key is None:
        return await _store(conn, new, audit)
    async with _atomic(conn):
        await event_store.lock_dedupe(conn, new.topic, new.dedupe_key)
        earlier = await event_store.find_duplicate(conn, new.topic, new.dedupe_key, limits.dedupe_seconds)
        if earlier is not None:
            return Published(earlier, await event_store.runs_of(conn, earlier.id), duplicate=True)
        return await _store(conn, new, audit)


async def _store(conn: asyncpg.Connection, new: NewEvent, audit: Callable[[int], NewAuditEntry] | None) -> Published:
    prepared = await event_store.prepare(conn, topic_patterns(new.topic))
    event = EventRecord(
        id=prepared.id,
        topic=new.topic,
        data=new.data,
        dedupe_key=new.dedupe_key,
        source=new.source,
        published_by=new.published_by,
        depth=new.depth,
        created_at=prepared.created_at,
    )
    plan = _plan([event], prepared.tasks)
    entry = audit(event.id) if audit is not None else None
    if not plan.one_by_one:
        return Published(event, await event_store.store(conn, event, plan.batch, audit=entry))
    async with _atomic(conn):
        started = {
            event.id: await event_store.store(conn, event, plan.batch, audit=entry, runs_after=len(plan.one_by_one))
        }
        await _start_one_by_one(conn, plan, started)
    return Published(event, started[event.id])


def _connection_trouble(exc: BaseException) -> bool:
    """An error that says "the database", not "this event": retry the batch later."""
    if isinstance(exc, asyncpg.PostgresError):
        # Data exception, integrity violation, program limit: about the data of one event.
        return str(exc.sqlstate or "")[:2] not in {"22", "23", "54"}
    return isinstance(exc, DATABASE_ERRORS)


async def match_pending(db: asyncpg.Pool, *, limit: int = 500) -> int:
    """Match a batch of events stored unmatched (run ends); returns how many were matched."""
    async with db.acquire() as conn, conn.transaction():
        events = await event_store.claim_unmatched(conn, limit)
        if not events:
            return 0
        try:
            async with conn.transaction():
                await match(conn, events)
        except Exception as exc:
            if _connection_trouble(exc):
                raise
            # One event the matcher cannot handle (data Postgres refuses, a bug) must not hold up the
            # backlog behind it: match one by one, and let the one that fails go, logged, with no runs.
            for event in events:
                try:
                    async with conn.transaction():
                        await match(conn, [event])
                except Exception as again:
                    if _connection_trouble(again):
                        raise
                    log.exception("event %s (%s) could not be matched; it starts no run", event.id, event.topic)
        await event_store.mark_matched(conn, [e.id for e in events])
    return len(events)


class Matcher:
    """Matches the events the database stores by itself (run ends) as soon as they commit.

    Wakes on NOTIFY pao_events, and polls every `poll_interval` for notifications lost while the
    LISTEN connection was down. Several processes share the backlog through SKIP LOCKED.
    """

    def __init__(self, db: asyncpg.Pool, *, dsn: str, poll_interval: float = 1.0) -> None:
        self._db = db
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._listener = Listener(dsn, [EVENTS_CHANNEL], lambda _c, _p: self._wake.set(), wake=self._wake.set)

    async def run(self) -> None:
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                await self._listener.ensure()
                self._wake.clear()
                try:
                    while await match_pending(self._db):
                        pass
                    backoff = 0.5
                except DATABASE_ERRORS as exc:
                    log.warning("matching events failed (%s); retrying in %.1fs", exc, backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                except Exception:
                    log.exception("matching events failed; retrying in %.1fs", backoff)
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, 30.0)
                    continue
                waiter = asyncio.ensure_future(self._wake.wait())
                stopper = asyncio.ensure_future(self._stopping.wait())
                try:
                    await asyncio.wait({waiter, stopper}, timeout=self._poll, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    waiter.cancel()
                    stopper.cancel()
        finally:
            await self._listener.close()

    async def stop(self) -> None:
        self._stopping.set()


def dumps(value: Any) -> str:
    """Compact JSON, as the stream carries `data`."""
    return json.dumps(value, separators=(",", ":"), default=str)
