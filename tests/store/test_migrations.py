"""The migrations build the schema the code expects."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import asyncpg
import pytest

from pao_orchestrator.errors import PaoError
from pao_orchestrator.store import migrate
from pao_orchestrator.store.migrator import discover
from pao_orchestrator.store.queries import names, sql
from pao_orchestrator.vocabulary import RunStatus, StepStatus
from tests.conftest import with_database

FIXED_TABLES = {"agents", "tasks", "runs", "run_steps", "events", "audit_log", "schema_migrations"}


async def test_every_named_query_prepares_against_the_migrated_schema(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        for name in sorted(names()):
            try:
                await conn.prepare(sql(name))
            except asyncpg.PostgresError as exc:  # pragma: no cover - the failure message is the point
                pytest.fail(f"query {name!r} does not fit the schema: {exc}")


async def test_schema_has_the_fixed_tables_and_run_columns(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        tables = {
            r["tablename"] for r in await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }
        run_columns = {
            r["column_name"]
            for r in await conn.fetch("SELECT column_name FROM information_schema.columns WHERE table_name = 'runs'")
        }
    assert tables >= FIXED_TABLES
    assert {
        "task_id",
        "status",
        "trigger",
        "scheduled_for",
        "started_at",
        "finished_at",
        "attempt",
        "error",
    } <= run_columns


async def test_migrate_is_idempotent_and_safe_when_two_processes_race(database_url: str) -> None:
    conns = [await asyncpg.connect(database_url) for _ in range(3)]
    try:
        results = await asyncio.wait_for(asyncio.gather(*(migrate(c) for c in conns)), timeout=30)
        # The template was already migrated: nothing left to apply, and no error from the race.
        assert results == [[], [], []]
        versions = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
        assert [r["version"] for r in versions] == [m.version for m in discover()]
    finally:
        for c in conns:
            await c.close()


async def test_fresh_database_migrates_once_under_concurrency(pg_dsn: str) -> None:
    admin = await asyncpg.connect(pg_dsn)
    name = f"pao_fresh_migrate_test_{uuid.uuid4().hex[:8]}"  # unique: test runs may share one Postgres
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        conns = [await asyncpg.connect(with_database(pg_dsn, name)) for _ in range(3)]
        try:
            results = await asyncio.wait_for(asyncio.gather(*(migrate(c) for c in conns)), timeout=30)
            applied = [v for r in results for v in r]
            assert sorted(applied) == [m.version for m in discover()]
        finally:
            for c in conns:
                await c.close()
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


def test_discover_rejects_gaps_and_stray_names(tmp_path: Path) -> None:
    (tmp_path / "0001_a.sql").write_text("SELECT 1")
    (tmp_path / "0003_c.sql").write_text("SELECT 1")
    with pytest.raises(PaoError, match="without gaps"):
        discover(tmp_path)
    (tmp_path / "0003_c.sql").unlink()
    (tmp_path / "2_bad.sql").write_text("SELECT 1")
    with pytest.raises(PaoError, match=r"NNNN_name\.sql"):
        discover(tmp_path)


async def test_the_schema_checks_the_same_step_and_run_vocabulary_the_code_speaks(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        checks = {
            r["conname"]: r["def"]
            for r in await conn.fetch(
                "SELECT conname, pg_get_constraintdef(oid) AS def FROM pg_constraint "
                "WHERE conname IN ('run_steps_status_check', 'runs_status_check')"
            )
        }
    assert all(f"'{status}'" in checks["run_steps_status_check"] for status in StepStatus)
    assert all(f"'{status}'" in checks["runs_status_check"] for status in RunStatus)
