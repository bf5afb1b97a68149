"""The connection pool: the one way the rest of the code reaches Postgres."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import asyncpg

from pao_orchestrator.errors import StoreUnavailable
from pao_orchestrator.store.embedded import EmbeddedPostgres

log = logging.getLogger(__name__)

Connection = asyncpg.Connection
Pool = asyncpg.Pool

# What a database that is restarting or unreachable raises through asyncpg. Background loops
# (worker, scheduler) log these and carry on; InternalClientError shows up on connections cut
# mid-protocol, TimeoutError when a connect or a statement times out.
DATABASE_ERRORS = (OSError, TimeoutError, asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb in and out as Python values; compact separators keep rows small.
    await conn.set_type_codec(
        "jsonb",
        encoder=lambda v: json.dumps(v, separators=(",", ":"), default=str),
        decoder=json.loads,
        schema="pg_catalog",
    )
    await conn.set_type_codec(
        "json",
        encoder=lambda v: json.dumps(v, separators=(",", ":"), default=str),
        decoder=json.loads,
        schema="pg_catalog",
    )


async def _keep_session(_conn: asyncpg.Connection) -> None:
    """Return a connection to the pool as it is.

    Nothing here leaves session state behind (no SET, no session advisory lock
    past its unlock, LISTEN lives on its own connection), and the default reset
    (`RESET ALL; UNLISTEN *; ...`) would cost a round trip per checkout.
    """


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool whose connections speak jsonb as Python values."""
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=60,
        )
    except (OSError, asyncpg.PostgresError) as exc:
        raise StoreUnavailable(f"cannot connect to Postgres: {exc}") from exc
    assert pool is not None
    return pool


@asynccontextmanager
async def open_database(
    database_url: str | None, data_dir: Path, *, max_size: int = 10
) -> AsyncIterator[tuple[asyncpg.Pool, str]]:
    """Yield a pool on `database_url`, or on the embedded Postgres under `data_dir` when it is unset."""
    embedded: EmbeddedPostgres | None = None
    dsn = database_url
    if not dsn:
        embedded = EmbeddedPostgres(data_dir)
        dsn = embedded.start()
    try:
        pool = await create_pool(dsn, max_size=max_size)
        try:
            yield pool, dsn
        finally:
            await pool.close()
    finally:
        if embedded is not None:
            embedded.stop()
