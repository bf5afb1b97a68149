"""Throw-away databases on a Postgres server, for the test suite and the benchmarks.

One helper for what both need: an admin DSN (DATABASE_URL's server, or an
embedded Postgres started for the occasion), a URL pointing the same server at
another database, and a uniquely named database that is dropped afterwards
(optionally migrated, or copied from a template). Names are unique per call,
so any number of suites and benchmarks can share one server.
"""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from pao_orchestrator.store.embedded import EmbeddedPostgres
from pao_orchestrator.store.migrator import migrate


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` (host URLs and the embedded server's socket URLs alike)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def database_name(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


@contextmanager
def data_folder(prefix: str = "pao-pg-") -> Iterator[Path]:
    """A fresh folder for an embedded Postgres's data, removed on exit (why mkdtemp: see postgres_server)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextmanager
def postgres_server(database_url: str | None, *, prefix: str = "pao-pg-") -> Iterator[str]:
    """An admin DSN: `database_url` when given, else an embedded Postgres started in a fresh folder,
    stopped and removed on exit.

    The folder comes from mkdtemp, not a shared temp root: as root, pgserver runs Postgres as its own
    `pgserver` user and opens the folders above the data dir to it, and a root some other tool chmods
    back to 0700 (pytest does so to /tmp/pytest-of-<user>) makes the running Postgres PANIC. A
    mkdtemp folder is unique per run and nobody else touches it.
    """
    if database_url:
        yield database_url
        return
    with data_folder(prefix) as path:
        embedded = EmbeddedPostgres(path)
        try:
            yield embedded.start()
        finally:
            embedded.stop()


@asynccontextmanager
async def scratch_database(
    admin_dsn: str, *, prefix: str = "pao_scratch", template: str | None = None, migrated: bool = False
) -> AsyncIterator[str]:
    """A new database named `<prefix>_<random>` on `admin_dsn`'s server, dropped (FORCE) on exit; yields its
    DSN. `template` (a DSN or a name) copies that database; `migrated` applies the migrations."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_dsn)
    try:
        if template is not None:
            source = database_name(template) if "/" in template else template
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{source}"')
        else:
            await admin.execute(f'CREATE DATABASE "{name}"')
        dsn = with_database(admin_dsn, name)
        if migrated:
            conn = await asyncpg.connect(dsn)
            try:
                await migrate(conn)
            finally:
                await conn.close()
        yield dsn
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
