"""What `pao doctor` asks the database and Redis (statements in diagnostics.sql).

Redis is read with the plain asyncio client: whether it answers, and for each
stream its length, last entry and consumer groups (with their pending entries
and lag). Driver errors become one line of text, as everywhere at this boundary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import asyncpg
import redis.asyncio as aioredis
from redis.exceptions import RedisError, ResponseError

from pao_orchestrator.store.queries import sql


async def server_version(conn: asyncpg.Connection) -> tuple[str, str]:
    """(the Postgres server version, the database's name)."""
    row = await conn.fetchrow(sql("server_version"))
    return str(row["version"]), str(row["database"])


@dataclass
class StreamState:
    name: str
    exists: bool
    length: int = 0
    last_id: str | None = None
    groups: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class RedisState:
    version: str
    streams: list[StreamState]


class RedisUnavailable(Exception):
    """Redis did not answer, or answered with an error; the message says which."""


def _text(value: Any) -> Any:
    return value.decode() if isinstance(value, bytes) else value


async def redis_state(url: str, streams: list[str], *, timeout: float = 5.0) -> RedisState:
    """Ping Redis and describe `streams`; RedisUnavailable with the reason when it cannot."""
    client = aioredis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        await client.ping()
        info = await client.info("server")
        states = []
        for name in streams:
            try:
                stream = await client.xinfo_stream(name)
            except ResponseError:  # no such key: nothing was ever written to it
                states.append(StreamState(name, exists=False))
                continue
            groups = [
                {
                    "name": _text(g.get("name")),
                    "consumers": g.get("consumers"),
                    "pending": g.get("pending"),
                    "lag": g.get("lag"),
                }
                for g in await client.xinfo_groups(name)
            ]
            states.append(
                StreamState(
                    name,
                    exists=True,
                    length=int(stream.get("length", 0)),
                    last_id=_text(stream.get("last-generated-id")),
                    groups=groups,
                )
            )
        return RedisState(version=str(info.get("redis_version", "?")), streams=states)
    except (RedisError, OSError) as exc:
        raise RedisUnavailable(f"{type(exc).__name__}: {exc}") from None
    finally:
        await client.aclose()
