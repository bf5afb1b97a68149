"""Shared fixtures: a real Postgres, and a fresh database per test cloned from a migrated template.

Postgres is `DATABASE_URL` when set (CI points it at the machine's server), else
an embedded one started for the session. Cloning a template (`CREATE DATABASE
... TEMPLATE`) costs tens of milliseconds, so every test gets its own database.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from pao_orchestrator.store import EmbeddedPostgres, create_pool, migrate

ROOT = Path(__file__).resolve().parent.parent


def with_database(dsn: str, name: str) -> str:
    """`dsn` pointing at database `name` (works for host URLs and socket URLs alike)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


@contextmanager
def embedded_data_dir() -> Iterator[Path]:
    """A fresh data dir for an embedded Postgres, removed afterwards.

    Not under pytest's temp root: as root, pgserver runs Postgres as its own `pgserver`
    user and opens the folders above the data dir to it, but every pytest run starting
    on the machine chmods the per-user root (/tmp/pytest-of-<user>) back to 0700, and
    the running Postgres then PANICs on global/pg_control. mkdtemp's folder is unique
    per run and nobody else chmods it.
    """
    path = Path(tempfile.mkdtemp(prefix="pao-test-pg-"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


REDIS_FOR_TESTS = "TEST_REDIS_URL"


@pytest.fixture(scope="session", autouse=True)
def no_redis_bridge_unless_asked() -> Iterator[None]:
    """Engines and `pao` processes that tests start bridge to Redis only when a test asks for it.

    With REDIS_URL in their environment (CI sets it) every one of them would relay its events to the
    default streams of the machine's Redis and read its default inbox. The Redis tests find the URL
    under TEST_REDIS_URL and give it, with streams of their own, to the engines they start.
    """
    url = os.environ.pop("REDIS_URL", None)
    if url is not None:
        os.environ[REDIS_FOR_TESTS] = url
    try:
        yield
    finally:
        os.environ.pop(REDIS_FOR_TESTS, None)
        if url is not None:
            os.environ["REDIS_URL"] = url


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A DSN of a Postgres this session may create databases on."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    if os.environ.get("CI") == "true":
        pytest.fail("CI=true but DATABASE_URL is unset: CI must test against the machine's Postgres")
    with embedded_data_dir() as data_dir:
        embedded = EmbeddedPostgres(data_dir)
        try:
            yield embedded.start()
        finally:
            embedded.stop()


@pytest.fixture(scope="session")
async def template_db(pg_dsn: str) -> AsyncIterator[str]:
    """A database migrated once per session; tests clone it."""
    name = f"pao_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        conn = await asyncpg.connect(with_database(pg_dsn, name))
        try:
            await migrate(conn)
        finally:
            await conn.close()
        yield name
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def database_url(pg_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database for this test, already migrated."""
    name = f"pao_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
        yield with_database(pg_dsn, name)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(database_url, max_size=10)
    try:
        yield pool
    finally:
        await asyncio.wait_for(pool.close(), timeout=10)


@pytest.fixture
def mcp_config(tmp_path: Path) -> Path:
    """An mcp.json naming the real `mcp-server-time` over stdio, as `time`."""
    path = tmp_path / "mcp.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "time": {
                        "command": sys.executable,
                        "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"],
                    }
                }
            }
        )
    )
    return path


FIXTURE_SERVER = ROOT / "tests" / "engine" / "downstream" / "fixtures" / "fixture_server.py"


@pytest.fixture
def fx_config(tmp_path: Path) -> Path:
    """An mcp.json with the test fixture server as `fx` and the real `mcp-server-time` as `time`."""
    path = tmp_path / "mcp-fx.json"
    path.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "fx": {"command": sys.executable, "args": [str(FIXTURE_SERVER)]},
                    "time": {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]},
                }
            }
        )
    )
    return path
