"""The Redis Streams bridge: the relay that mirrors stored events to PAO_STREAM_OUT, and the
ingest that turns entries of PAO_STREAM_IN into published events.

Outgoing. Every stored event (published ones and run ends alike) gets an `event_outbox` row in the
transaction that stores it (while a relay runs, see `register`). The relay takes the oldest rows
out (one DELETE ... RETURNING, SKIP LOCKED: relays of several processes never send one twice),
appends them with XADD in one round trip, and only then commits; if Redis is down the transaction
rolls back and the rows wait. A crash after
XADD and before the commit re-sends at most one batch, and every entry carries `event_id`, so a
consumer can drop what it has seen.

Incoming. Entries are read through the consumer group `pao`; each becomes a publish_event and is
acknowledged only after the event has committed. Entries a dead consumer left unacknowledged are
claimed with XAUTOCLAIM once idle for `claim_idle_ms`. An entry without its own `dedupe_key` is
published with the key `<stream>:<entry id>`, so a redelivered entry finds its event instead of
storing a second one. A malformed entry is moved to `<stream>:dead` with the reason and
acknowledged: never retried for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import asyncpg
import redis.asyncio as aioredis

from pao_orchestrator.contracts import CONSUMER_GROUP, DEAD_LETTER_SUFFIX, EVENTS_CHANNEL
from pao_orchestrator.engine.runtime.events import EventLimits, NewEvent, check_event, dumps, publish
from pao_orchestrator.errors import InvalidArgument, StoreUnavailable
from pao_orchestrator.store import DATABASE_ERRORS, Listener, OutboxEntry, streams
from pao_orchestrator.store import events as event_store

log = logging.getLogger(__name__)

_RETRYABLE = (StoreUnavailable, *DATABASE_ERRORS)
# SQLSTATE classes that say "this data": data exception, integrity violation, program limit.
_DATA_CLASSES = frozenset({"22", "23", "54"})


def entry_fields(event: OutboxEntry) -> dict[str, str]:
    """An event as an entry of the outgoing stream (all fields text; `data` is JSON)."""
    fields = {
        "event_id": str(event.id),
        "topic": event.topic,
        "data": dumps(event.data),
        "source": event.source,
        "depth": str(event.depth),
        "created_at": event.created_at.isoformat(),
    }
    if event.dedupe_key is not None:
        fields["dedupe_key"] = event.dedupe_key
    return fields


class _Loop:
    """Shared stop/backoff plumbing of the two bridge loops."""

    def __init__(self) -> None:
        self._stopping = asyncio.Event()
        self._wake = asyncio.Event()
        self._backoff = 0.2

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=seconds)
        self._wake.clear()

    async def _failed(self, what: str, exc: BaseException) -> None:
        log.warning("%s failed (%s); retrying in %.1fs", what, exc, self._backoff)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=self._backoff)
        self._backoff = min(self._backoff * 2, 5.0)


class Relay(_Loop):
    """Appends stored events to the outgoing stream, oldest first, through the outbox."""

    def __init__(
        self,
        db: asyncpg.Pool,
        *,
        redis_url: str,
        stream: str,
        dsn: str,
        maxlen: int | None = None,
        batch: int = 500,
        poll: float = 1.0,
    ) -> None:
        super().__init__()
        self._db = db
        self._url = redis_url
        self._stream = stream
        self._maxlen = maxlen or None  # 0: never trimmed
        self._batch = batch
        self._poll = poll
        self._listener = Listener(dsn, [EVENTS_CHANNEL], lambda _c, _p: self._wake.set(), wake=self._wake.set)
        self._seen_at = float("-inf")

    async def register(self) -> None:
        """Say that this relay runs (at most once a minute): stored events enter the outbox while a relay
        was seen within a day, so a database without one does not keep an outbox nobody empties."""
        now = time.monotonic()
        if now - self._seen_at < 60:
            return
        async with self._db.acquire() as conn:
            await event_store.relay_seen(conn, self._stream)
        self._seen_at = now

    async def relay_once(self, client: aioredis.Redis) -> int:
        """Append one batch; returns how many events were delivered."""
        await self.register()
        async with self._db.acquire() as conn, conn.transaction():
            entries = await event_store.take_outbox(conn, self._batch)
            if not entries:
                return 0
            # Committed only once Redis has them: if XADD fails, the rollback puts them back.
            await streams.append(client, self._stream, [entry_fields(e) for e in entries], maxlen=self._maxlen)
        return len(entries)

    async def run(self) -> None:
        async with streams.connect(self._url) as client:
            try:
                while not self._stopping.is_set():
                    try:
                        await self.register()
                    except DATABASE_ERRORS as exc:
                        await self._failed("registering the relay", exc)
                        continue
                    await self._listener.ensure()
                    try:
                        sent = await self.relay_once(client)
                    except _RETRYABLE as exc:
                        await self._failed("relaying events to Redis", exc)
                        continue
                    except Exception as exc:  # a bug: keep relaying; the batch stays in the outbox
                        log.exception("relaying events to Redis failed")
                        await self._failed("relaying events to Redis", exc)
                        continue
                    self._backoff = 0.2
                    if sent < self._batch:
                        await self._pause(self._poll)
            finally:
                await self._listener.close()


class Ingest(_Loop):
    """Publishes the entries of the incoming stream, read through the consumer group."""

    def __init__(
        self,
        db: asyncpg.Pool,
        *,
        redis_url: str,
        stream: str,
        consumer: str,
        limits: EventLimits,
        claim_idle_ms: int = 30_000,
        batch: int = 100,
        block_ms: int = 1000,
    ) -> None:
        super().__init__()
        self._db = db
        self._url = redis_url
        self.stream = stream
        self.dead_stream = stream + DEAD_LETTER_SUFFIX
        self._consumer = consumer
        self._limits = limits
        self._claim_idle_ms = claim_idle_ms
        self._batch = batch
        self._block_ms = block_ms

    def _parse(self, entry: streams.Entry) -> NewEvent:
        """The event an entry asks for; InvalidArgument naming the field when it is malformed."""
        fields = entry.fields
        topic = fields.get("topic")
        if topic is None:
            raise InvalidArgument("topic", "is missing; an entry needs topic and data (a JSON object as text)")
        try:
            data: Any = json.loads(fields.get("data", "{}"))
        except ValueError as exc:
            raise InvalidArgument("data", f"is not JSON: {exc}") from None
        source = fields.get("source") or f"redis:{self.stream}"
        dedupe_key = fields.get("dedupe_key") or f"{self.stream}:{entry.id}"
        check_event(topic, data, source, dedupe_key, limits=self._limits)
        return NewEvent(topic=topic, data=data, source=source, dedupe_key=dedupe_key)

    async def handle(self, client: aioredis.Redis, entry: streams.Entry) -> bool:
        """Publish one entry (or dead-letter it); True when it may be acknowledged."""
        try:
            new = self._parse(entry)
        except InvalidArgument as exc:
            await streams.dead_letter(client, self.stream, CONSUMER_GROUP, self.dead_stream, entry, str(exc))
            log.warning("stream %s entry %s moved to %s: %s", self.stream, entry.id, self.dead_stream, exc)
            return False
        try:
            async with self._db.acquire() as conn, conn.transaction():
                await publish(conn, new, limits=self._limits)
        except asyncpg.PostgresError as exc:
            if str(exc.sqlstate or "")[:2] not in _DATA_CLASSES:
                raise  # the database, not the entry: not acknowledged, so it is delivered again
            reason = f"Postgres refused the event: {exc}"
            await streams.dead_letter(client, self.stream, CONSUMER_GROUP, self.dead_stream, entry, reason)
            log.warning("stream %s entry %s moved to %s: %s", self.stream, entry.id, self.dead_stream, reason)
            return False
        return True

    async def ingest_once(self, client: aioredis.Redis) -> int:
        """Claim a dead consumer's idle entries, read new ones, publish and acknowledge them."""
        await streams.ensure_group(client, self.stream, CONSUMER_GROUP)
        entries = await streams.claim_stale(
            client, self.stream, CONSUMER_GROUP, self._consumer, min_idle_ms=self._claim_idle_ms, count=self._batch
        )
        if not entries:
            entries = await streams.read_new(
                client, self.stream, CONSUMER_GROUP, self._consumer, count=self._batch, block_ms=self._block_ms
            )
        done = [entry.id for entry in entries if await self.handle(client, entry)]
        await streams.ack(client, self.stream, CONSUMER_GROUP, done)
        return len(entries)

    async def run(self) -> None:
        async with streams.connect(self._url) as client:
            try:
                await self._loop(client)
            finally:
                # Each process reads as a consumer of its own name: one that stops with nothing pending
                # leaves the group, so restarts do not pile up consumers.
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(streams.leave_group(client, self.stream, CONSUMER_GROUP, self._consumer), 2)

    async def _loop(self, client: aioredis.Redis) -> None:
        while not self._stopping.is_set():
            try:
                await self.ingest_once(client)
            except _RETRYABLE as exc:
                await self._failed(f"reading {self.stream}", exc)
                continue
            except Exception as exc:  # a bug: keep ingesting; the entry is redelivered later
                log.exception("ingesting %s failed", self.stream)
                await self._failed(f"reading {self.stream}", exc)
                continue
            self._backoff = 0.2
