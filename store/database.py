"""The connection pool: the one way the rest of the code reaches Postgres."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pao_orchestrator.errors import InvalidArgument, StoreUnavailable
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


URL_EXAMPLE = "postgresql://user:password@host:5432/database"
# user:password@ in a URL the standard parser rejects (an unescaped character, a bad bracket).
_USERINFO = re.compile(r"^(?P<head>[^:/?#]+://[^:@/?#]*:)(?P<password>.*)@(?=[^@]*$)", re.DOTALL)


def _password(dsn: str) -> str | None:
    try:
        return urlsplit(dsn).password
    except ValueError:
        match = _USERINFO.match(dsn)
        return match.group("password") if match else None


def redact(dsn: str) -> str:
    """`dsn` with its password replaced by `***`, for messages and logs."""
    password = _password(dsn)
    if not password:
        return dsn
    try:
        parts = urlsplit(dsn)
    except ValueError:
        return _USERINFO.sub(r"\g<head>***@", dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{parts.username or ''}:***@{host}", parts.path, parts.query, parts.fragment))


def _one_line(exc: BaseException, dsn: str) -> str:
    """The driver's message on one line, with the password (if any) blanked out."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    password = _password(dsn)
    return text.replace(password, "***") if password else text


def _looks_like_postgres(dsn: str) -> bool:
    try:
        return urlsplit(dsn).scheme in ("postgresql", "postgres") and "://" in dsn
    except ValueError:
        return True  # a postgresql:// URL with a bad part: the driver says which


async def create_pool(dsn: str, *, min_size: int = 1, max_size: int = 10) -> asyncpg.Pool:
    """Open a pool whose connections speak jsonb as Python values.

    Raises InvalidArgument when `dsn` is not a Postgres URL and StoreUnavailable when
    Postgres cannot be reached or refuses the connection; each says so in one line that
    names the URL without its password.
    """
    if not _looks_like_postgres(dsn):
        raise InvalidArgument("DATABASE_URL", f"{redact(dsn)!r} is not a Postgres URL: it must look like {URL_EXAMPLE}")
    try:
        pool = await asyncpg.create_pool(
            dsn,
            min_size=min_size,
            max_size=max_size,
            init=_init_connection,
            reset=_keep_session,
            command_timeout=60,
        )
    except (asyncpg.ClientConfigurationError, ValueError, OverflowError) as exc:
        # Raised while reading the URL (a bad port, parameter or bracket), before any connection.
        raise InvalidArgument(
            "DATABASE_URL",
            f"{redact(dsn)!r} is not a Postgres URL: {_one_line(exc, dsn)}; it must look like {URL_EXAMPLE}",
        ) from None
    except (*DATABASE_ERRORS,) as exc:
        raise StoreUnavailable(f"cannot connect to Postgres at {redact(dsn)}: {_one_line(exc, dsn)}") from None
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
