"""Redis Streams: the outgoing stream the relay appends events to, and the incoming stream read
through a consumer group. Redis errors are translated into StoreUnavailable here."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pao_orchestrator.errors import StoreUnavailable

T = TypeVar("T")
Fields = dict[str, str]


@dataclass(frozen=True)
class Entry:
    """One entry of a stream: its id and its fields (text)."""

    id: str
    fields: Fields


@asynccontextmanager
async def connect(url: str) -> AsyncIterator[aioredis.Redis]:
    """A Redis client (connections are made on use, and re-made after Redis restarts)."""
    client = aioredis.Redis.from_url(url, decode_responses=True, socket_timeout=10, socket_connect_timeout=5)
    try:
        yield client
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def _call(what: str, fn: Callable[[], Any]) -> Any:
    try:
        return await fn()
    except RedisError as exc:
        raise StoreUnavailable(f"Redis {what} failed: {exc}") from exc


async def append(
    client: aioredis.Redis, stream: str, entries: Sequence[Fields], *, maxlen: int | None = None
) -> list[str]:
    """XADD every entry, in order, in one round trip; returns their ids. With `maxlen`, the stream is
    trimmed to about that many entries as it grows (MAXLEN ~: Redis trims whole nodes, cheaply)."""

    async def run() -> list[str]:
        async with client.pipeline(transaction=False) as pipe:
            for fields in entries:
                pipe.xadd(stream, fields, maxlen=maxlen, approximate=True)  # type: ignore[arg-type]
            return list(await pipe.execute())

    return await _call("XADD", run)  # type: ignore[no-any-return]


async def ensure_group(client: aioredis.Redis, stream: str, group: str) -> None:
    """Create the consumer group (and the stream) if missing; it reads from the stream's start."""
    try:
        await client.xgroup_create(stream, group, id="0", mkstream=True)
    except ResponseError as exc:
        if "BUSYGROUP" not in str(exc):
            raise StoreUnavailable(f"Redis XGROUP CREATE failed: {exc}") from exc
    except RedisError as exc:
        raise StoreUnavailable(f"Redis XGROUP CREATE failed: {exc}") from exc


def _entries(raw: Any) -> list[Entry]:
    out = []
    for entry_id, fields in raw or []:
        if fields is None:  # deleted while pending
            continue
        out.append(Entry(str(entry_id), dict(fields)))
    return out


async def read_new(
    client: aioredis.Redis, stream: str, group: str, consumer: str, *, count: int, block_ms: int
) -> list[Entry]:
    """XREADGROUP: entries never delivered to the group, waiting up to `block_ms` for some."""
    raw = await _call(
        "XREADGROUP",
        lambda: client.xreadgroup(group, consumer, {stream: ">"}, count=count, block=block_ms),
    )
    if not raw:
        return []
    if isinstance(raw, dict):  # RESP3
        return [e for entries in raw.values() for e in _entries(entries[0] if entries else [])]
    return [e for _name, entries in raw for e in _entries(entries)]


async def claim_stale(
    client: aioredis.Redis, stream: str, group: str, consumer: str, *, min_idle_ms: int, count: int
) -> list[Entry]:
    """XAUTOCLAIM: take over entries delivered to a consumer that has not acknowledged them for
    `min_idle_ms` (it died), from the start of the pending list."""
    raw = await _call(
        "XAUTOCLAIM", lambda: client.xautoclaim(stream, group, consumer, min_idle_ms, start_id="0-0", count=count)
    )
    return _entries(raw[1] if raw else [])


async def ack(client: aioredis.Redis, stream: str, group: str, ids: Sequence[str]) -> None:
    if ids:
        await _call("XACK", lambda: client.xack(stream, group, *ids))


async def dead_letter(
    client: aioredis.Redis, stream: str, group: str, dead_stream: str, entry: Entry, reason: str
) -> None:
    """Move an entry to the dead-letter stream with the reason, and acknowledge it, atomically."""

    async def run() -> None:
        async with client.pipeline(transaction=True) as pipe:
            fields: dict[Any, Any] = {**entry.fields, "reason": reason, "entry_id": entry.id, "stream": stream}
            pipe.xadd(dead_stream, fields)
            pipe.xack(stream, group, entry.id)
            await pipe.execute()

    await _call("dead-letter", run)


async def leave_group(client: aioredis.Redis, stream: str, group: str, consumer: str) -> bool:
    """Remove `consumer` from the group if it holds no pending entry (those stay for XAUTOCLAIM);
    True when it was removed."""

    async def run() -> bool:
        consumers = await client.xinfo_consumers(stream, group)
        mine = next((c for c in consumers if c.get("name") == consumer), None)
        if mine is None or int(mine.get("pending", 0)) > 0:
            return False
        await client.xgroup_delconsumer(stream, group, consumer)
        return True

    return await _call("XGROUP DELCONSUMER", run)  # type: ignore[no-any-return]


async def ping(client: aioredis.Redis) -> None:
    await _call("PING", client.ping)
