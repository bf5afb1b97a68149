"""Shared fixtures: a real Postgres, and a fresh database per test cloned from a migrated template.

Postgres is `DATABASE_URL` when set (CI points it at the machine's server), else
an embedded one started for the session. Cloning a template (`CREATE DATABASE
... TEMPLATE`) costs tens of milliseconds, so every test gets its own database.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from functools import partial
from pathlib import Path

import asyncpg
import pytest

from pao_orchestrator.store import create_pool, data_folder, postgres_server, scratch_database, with_database

ROOT = Path(__file__).resolve().parent.parent

# Tests import these from here; they are the store's scratch helpers, which the benchmarks use too.
__all__ = ["embedded_data_dir", "with_database"]
embedded_data_dir = partial(data_folder, "pao-test-pg-")


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
    """A DSN of a Postgres this session may create databases on: DATABASE_URL's server, else an embedded one."""
    url = os.environ.get("DATABASE_URL")
    if not url and os.environ.get("CI") == "true":
        pytest.fail("CI=true but DATABASE_URL is unset: CI must test against the machine's Postgres")
    with postgres_server(url, prefix="pao-test-pg-") as dsn:
        yield dsn


@pytest.fixture(scope="session")
async def template_db(pg_dsn: str) -> AsyncIterator[str]:
    """A database migrated once per session; tests clone it."""
    async with scratch_database(pg_dsn, prefix=f"pao_tpl_{os.getpid()}", migrated=True) as dsn:
        yield dsn


@pytest.fixture
async def database_url(pg_dsn: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database for this test, already migrated."""
    async with scratch_database(pg_dsn, prefix="pao_t", template=template_db) as dsn:
        yield dsn


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
