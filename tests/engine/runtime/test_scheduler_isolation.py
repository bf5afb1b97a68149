"""One task that cannot fire fails alone: the others fire on time, and a failing pass backs off.

A poisoned task is stored as a task saved before today's checks would be: its key is written in
SQL, past create_task, which now refuses it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from pao_orchestrator.engine.runtime import Scheduler
from tests.engine.support import new_task, runs_of, task_row


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@contextlib.asynccontextmanager
async def running_scheduler(db: asyncpg.Pool, dsn: str, **options: Any) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(db, dsn=dsn, **options)
    loop = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        await asyncio.wait_for(loop, timeout=10)


async def poison(db: asyncpg.Pool, task_id: UUID, column: str, template: str) -> None:
    async with db.acquire() as conn:
        await conn.execute(f"UPDATE tasks SET {column} = $2 WHERE id = $1", task_id, template)


async def every_second(db: asyncpg.Pool, count: int) -> list[UUID]:
    now = datetime.now(UTC)
    return [await new_task(db, "* * * * * *", created=now, overlap_policy="allow") for _ in range(count)]


def assert_fired_every_second(runs: list[asyncpg.Record], at_least: int) -> None:
    fires = [r["scheduled_for"] for r in runs]
    assert len(fires) >= at_least, fires
    # Consecutive whole seconds: nothing dropped, nothing doubled; each created in time for its instant.
    assert fires == [fires[0] + timedelta(seconds=i) for i in range(len(fires))]
    assert all(r["created_at"] <= r["scheduled_for"] + timedelta(seconds=0.5) for r in runs)


@pytest.mark.parametrize("column", ["concurrency_key", "dedupe_key"])
async def test_a_key_that_cannot_render_fails_its_own_fires_and_the_others_fire_on_time(
    db: asyncpg.Pool, database_url: str, column: str
) -> None:
    healthy = await every_second(db, 5)
    [bad] = await every_second(db, 1)
    await poison(db, bad, column, "mailbox-${event.data.account}")  # the README's own example, on a cron task
    async with running_scheduler(db, database_url) as scheduler:
        async with asyncio.timeout(20):
            while len(await runs_of(db, healthy[-1])) < 4:
                await asyncio.sleep(0.1)
    assert scheduler.failed_passes == 0
    for task_id in healthy:
        runs = await runs_of(db, task_id)
        assert_fired_every_second(runs, 3)
        assert {r["status"] for r in runs} == {"queued"}
    failed = await runs_of(db, bad)
    assert len(failed) >= 3 and {r["status"] for r in failed} == {"failed"}
    assert all(r["reason"] == "this fire could not become a run" for r in failed)
    assert f"{column}: " in failed[0]["error"] and "'event'" in failed[0]["error"]
    # The task keeps its schedule: each fire fails on record, the next one is tried.
    assert (await task_row(db, bad))["status"] == "active"


async def test_a_key_that_renders_text_postgres_cannot_hold_fails_its_fire_alone(db: asyncpg.Pool) -> None:
    created = utc(2026, 11, 26, 6, 25)
    healthy = await new_task(db, "*/10 * * * *", created=created)
    bad = await new_task(db, "*/10 * * * *", created=created)
    await poison(db, bad, "concurrency_key", "k-${ 'a\\u0000b' }")
    await Scheduler(db, clock=lambda: utc(2026, 11, 26, 6, 30, 1)).run_pass()
    [good] = await runs_of(db, healthy)
    assert good["status"] == "queued"
    [failed] = await runs_of(db, bad)
    assert failed["status"] == "failed" and "NUL" in failed["error"]


async def test_a_pass_whose_write_fails_retries_task_by_task_and_only_the_task_at_fault_stops(
    db: asyncpg.Pool,
) -> None:
    created = utc(2026, 11, 26, 6, 25)
    healthy = [await new_task(db, "*/10 * * * *", created=created) for _ in range(5)]
    bad = await new_task(db, "*/10 * * * *", created=created)
    async with db.acquire() as conn:
        # Postgres itself refuses this task's runs (as it would refuse a value it cannot hold).
        await conn.execute(
            f"""
            CREATE FUNCTION refuse_runs() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.task_id = '{bad}' THEN RAISE EXCEPTION 'refused' USING ERRCODE = '22023'; END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER refuse_runs BEFORE INSERT ON runs FOR EACH ROW EXECUTE FUNCTION refuse_runs();
            """
        )
    result = await Scheduler(db, clock=lambda: utc(2026, 11, 26, 6, 30, 1)).run_pass()
    assert result.queued == 5
    for task_id in healthy:
        [run] = await runs_of(db, task_id)
        assert run["status"] == "queued"
        assert (await task_row(db, task_id))["next_fire_at"] == utc(2026, 11, 26, 6, 40)
    # Neither its run nor a failed record could be written: the task is paused, not retried forever.
    assert await runs_of(db, bad) == []
    assert (await task_row(db, bad))["status"] == "paused"


async def listen_pids(db: asyncpg.Pool) -> set[int]:
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    return {r["pid"] for r in rows}


async def test_a_failing_pass_backs_off_as_it_says_and_keeps_its_listen_connection(
    db: asyncpg.Pool, database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pao_orchestrator.engine.runtime.scheduler")
    async with running_scheduler(db, database_url) as scheduler:
        async with asyncio.timeout(10):
            while not await listen_pids(db) or scheduler.passes < 1:
                await asyncio.sleep(0.05)
        before = await listen_pids(db)
        async with db.acquire() as conn:
            # Every pass now fails (the statement that locks due tasks names this column); the
            # NOTIFY wakes the scheduler to start failing now.
            await conn.execute("ALTER TABLE tasks RENAME COLUMN misfire_policy TO misfire_policy_gone")
            await conn.execute("SELECT pg_notify('pao_tasks', '')")

        def failures() -> list[logging.LogRecord]:
            return [r for r in caplog.records if "scheduler pass failed" in r.getMessage()]

        async with asyncio.timeout(10):
            while len(failures()) < 3:
                await asyncio.sleep(0.05)
        first, second, third = failures()[:3]
        assert [r.getMessage().rsplit("retry in ", 1)[1] for r in (first, second, third)] == ["0.5s", "1.0s", "2.0s"]
        # It waits as long as it says before the next try, instead of spinning.
        assert second.created - first.created >= 0.45
        assert third.created - second.created >= 0.95
        assert await listen_pids(db) == before
        assert scheduler.passes >= 1
        async with db.acquire() as conn:
            await conn.execute("ALTER TABLE tasks RENAME COLUMN misfire_policy_gone TO misfire_policy")
        task_id = await new_task(db, "* * * * * *", created=datetime.now(UTC))
        async with asyncio.timeout(20):
            while not await runs_of(db, task_id):
                await asyncio.sleep(0.1)
