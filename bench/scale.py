"""Scheduler memory and per-fire cost at 1,000 vs 100,000 active cron tasks.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.scale \
        [--small 1000] [--large 100000] [--seconds 20]

Two phases against a fresh database, one scheduler (no worker: runs stay queued, which is the
scheduler's cost alone), the small size being the peer of the large one in the same invocation:

* burst: every task is due at once (as after an outage, misfire_policy=run_once): the scheduler
  drains them in LIMIT batches; per-fire cost = drain time / fires, RSS sampled throughout.
* steady: --small tasks fire once a minute at spread seconds ('S * * * * *'), the others are daily
  crons due hours later; the scheduler loop runs for --seconds on its own (waking for each due
  second) and per-fire cost = time inside passes / fires created. Same fire rate, 100x the table.

Flat means the large/small ratios of per-fire cost and RSS stay near 1: the scheduler never loads
all tasks, only the due ones, a batch at a time.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import psutil

from bench.lateness import fresh_database
from pao_orchestrator.engine.runtime import Scheduler
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.store import create_pool, postgres_server

PAYLOAD = {"pipeline": [{"id": "tick", "uses": "pao.noop", "with": {}}]}


def rss_mb() -> float:
    return psutil.Process().memory_info().rss / 2**20


async def insert(db: asyncpg.Pool, firing: int, idle: int, *, due_now: bool) -> None:
    """`firing` tasks on 'S * * * * *' (each once a minute, at second S) and `idle` daily tasks due
    hours from now, in one statement; `due_now` makes every task due at once instead."""
    async with db.acquire() as conn:
        owner = await agent_store.ensure_owner(conn)
        await conn.execute("TRUNCATE runs, tasks CASCADE")
        await conn.execute(
            """
            WITH spec AS (
                SELECT i, i < $3::int AS firing, i % 60 AS s, i / 60 % 60 AS m, (i / 3600 % 18) + 3 AS h_ahead
                FROM generate_series(0, $3::int + $4::int - 1) AS i
            )
            INSERT INTO tasks (title, schedule_kind, schedule_expr, timezone, payload, status, next_fire_at,
                               created_by, overlap_policy)
            SELECT 'task ' || i, 'cron',
                   CASE WHEN firing THEN s || ' * * * * *'
                        ELSE s || ' ' || m || ' ' || extract(hour FROM now() + make_interval(hours => h_ahead))
                             || ' * * *' END,
                   'UTC', $1, 'active',
                   CASE WHEN $5::bool THEN now() - interval '1 second'
                        WHEN firing THEN date_trunc('minute', now()) + make_interval(secs => s)
                        ELSE date_trunc('hour', now()) + make_interval(hours => h_ahead, mins => m, secs => s) END,
                   $2, 'allow'
            FROM spec
            """,
            PAYLOAD,
            owner.id,
            firing,
            idle,
            due_now,
        )
        # A second already past this minute fires next minute.
        await conn.execute(
            "UPDATE tasks SET next_fire_at = next_fire_at + interval '1 minute' "
            "WHERE next_fire_at <= now() AND schedule_expr LIKE '% * * * * *' AND $1::bool",
            not due_now,
        )
        await conn.execute("VACUUM ANALYZE tasks")


class Timed:
    """Wraps Scheduler.run_pass to add up the time spent inside passes and the fires they made."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.seconds = 0.0
        self.fires = 0
        self.passes = 0
        original: Callable[[], Awaitable[Any]] = scheduler.run_pass

        async def timed() -> Any:
            start = time.perf_counter()
            result = await original()
            self.seconds += time.perf_counter() - start
            self.fires += result.queued + result.skipped
            self.passes += 1
            return result

        scheduler.run_pass = timed  # type: ignore[method-assign]


async def sample_rss(peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_mb())
        await asyncio.sleep(0.05)


async def burst(db: asyncpg.Pool, count: int) -> dict[str, float]:
    await insert(db, count, 0, due_now=True)
    gc.collect()
    before = rss_mb()
    peak = [before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(peak, stop))
    scheduler = Scheduler(db)
    timed = Timed(scheduler)
    start = time.perf_counter()
    while (await scheduler.run_pass()).tasks:
        pass
    elapsed = time.perf_counter() - start
    stop.set()
    await sampler
    return {
        "tasks": count,
        "fires": timed.fires,
        "passes": timed.passes,
        "us_per_fire": elapsed / max(timed.fires, 1) * 1e6,
        "rss_before": before,
        "rss_peak": peak[0],
    }


async def steady(db: asyncpg.Pool, dsn: str, firing: int, count: int, seconds: float) -> dict[str, float]:
    await insert(db, firing, count - firing, due_now=False)
    gc.collect()
    before = rss_mb()
    peak = [before]
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(peak, stop))
    scheduler = Scheduler(db, dsn=dsn)
    timed = Timed(scheduler)
    loop = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    await scheduler.stop()
    await loop
    stop.set()
    await sampler
    return {
        "tasks": count,
        "fires": timed.fires,
        "passes": timed.passes,
        "us_per_fire": timed.seconds / max(timed.fires, 1) * 1e6,
        "rss_before": before,
        "rss_peak": peak[0],
    }


def table(title: str, small: dict[str, float], large: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"{'tasks':>10}{'fires':>10}{'passes':>8}{'us/fire':>10}{'RSS before MB':>15}{'RSS peak MB':>13}")
    for row in (small, large):
        print(
            f"{row['tasks']:>10,.0f}{row['fires']:>10,.0f}{row['passes']:>8.0f}{row['us_per_fire']:>10.0f}"
            f"{row['rss_before']:>15.1f}{row['rss_peak']:>13.1f}"
        )
    print(
        f"{'large/small':>10}{'':>18}{large['us_per_fire'] / small['us_per_fire']:>10.2f}"
        f"{'':>15}{large['rss_peak'] / small['rss_peak']:>13.2f}"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", type=int, default=1000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    print(f"scheduler alone, batches of 1,000 tasks per pass, {os.cpu_count()} CPUs")
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        bursts, steadies = await measure(admin_dsn, args.small, args.large, args.seconds)
    table("burst: every task due at once", *bursts)
    if steadies is not None:
        table(
            f"steady: {args.small:,} tasks firing once a minute ('S * * * * *'), the rest daily crons "
            f"due hours later; loop running {args.seconds:.0f} s",
            *steadies,
        )


Pair = tuple[dict[str, float], dict[str, float]]


async def measure(admin_dsn: str, small: int, large: int, seconds: float) -> tuple[Pair, Pair | None]:
    """(burst small, burst large), and (steady small, steady large) unless `seconds` is 0."""
    async with fresh_database(admin_dsn) as dsn:
        db = await create_pool(dsn, max_size=5)
        try:
            bursts = (await burst(db, small), await burst(db, large))
            steadies = None
            if seconds > 0:
                steadies = (
                    await steady(db, dsn, small, small, seconds),
                    await steady(db, dsn, small, large, seconds),
                )
            return bursts, steadies
        finally:
            await db.close()


if __name__ == "__main__":
    asyncio.run(main())
