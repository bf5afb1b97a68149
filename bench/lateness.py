"""Lateness of scheduled runs: N tasks firing every second, against APScheduler as the peer.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.lateness \
        [--tasks 1000] [--seconds 60] [--concurrency 1000]

pao: a fresh database (created on DATABASE_URL's server, or an embedded Postgres when it is
unset: pao_orchestrator.store's scratch helpers, shared by the benchmarks and the tests) holds N
tasks with the 6-field cron `* * * * * *` and a one-step `pao.noop` pipeline; the real scheduler
and a real worker run in this process for the given time. Lateness is
runs.started_at - runs.scheduled_for (both written by Postgres). Every fire is checked: each task
must have one row per second from its first fire to its last (no drop, no double).

Peer, same invocation, same machine: APScheduler 3's AsyncIOScheduler firing N in-memory
`CronTrigger(second="*")` jobs for the same time; its lateness is the job's start minus its
scheduled second. No database, no worker, no durability: a floor, not a competitor.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import statistics
import sys
import time
from datetime import datetime, timedelta

import asyncpg

from pao_orchestrator.engine.app import Tools
from pao_orchestrator.engine.downstream import DownstreamPool, Registry
from pao_orchestrator.engine.runtime import Executor, Scheduler, Worker, worker_name
from pao_orchestrator.process import settle_heap
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.store import create_pool, postgres_server, scratch_database

LISTENING = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
PAYLOAD = {"pipeline": [{"id": "tick", "uses": "pao.noop", "with": {}}]}


def fresh_database(admin_dsn: str) -> contextlib.AbstractAsyncContextManager[str]:
    """A new, migrated database on `admin_dsn`'s server; dropped afterwards."""
    return scratch_database(admin_dsn, prefix="pao_bench", migrated=True)


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]

    return {
        "count": len(ordered),
        "p50": pick(0.50),
        "p90": pick(0.90),
        "p99": pick(0.99),
        "max": ordered[-1],
        "mean": statistics.fmean(ordered),
    }


async def insert_tasks(db: asyncpg.Pool, count: int, first: datetime, overlap: str = "skip") -> None:
    async with db.acquire() as conn:
        owner = await agent_store.ensure_owner(conn)
        # One statement for all tasks: the benchmark measures firing, not create_task.
        await conn.execute(
            """
            INSERT INTO tasks (title, schedule_kind, schedule_expr, timezone, payload, status, next_fire_at,
                               created_by, created_at, overlap_policy)
            SELECT 'tick ' || i, 'cron', '* * * * * *', 'Europe/Chisinau', $1, 'active', $2, $3, now(), $5
            FROM generate_series(1, $4) AS i
            """,
            PAYLOAD,
            first,
            owner.id,
            count,
            overlap,
        )


async def run_worker(dsn: str, concurrency: int, seconds: float) -> None:
    """A worker process: claims and executes runs until killed or `seconds` pass."""
    db = await create_pool(dsn, min_size=4, max_size=30)
    async with DownstreamPool(Registry(), environ=os.environ) as pool:
        name = worker_name()
        worker = Worker(
            db,
            Executor(db, Tools(Registry(), pool), worker=name, secrets={}),
            name=name,
            concurrency=concurrency,
            lease_seconds=30,
            dsn=dsn,
        )
        loop = asyncio.create_task(worker.run())
        await asyncio.sleep(seconds)
        await worker.stop(10)
        loop.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await loop
    await db.close()


async def run_pao(
    admin_dsn: str, tasks: int, seconds: float, concurrency: int, processes: int, overlap: str
) -> tuple[dict[str, float], dict[str, int]]:
    async with fresh_database(admin_dsn) as dsn:
        db = await create_pool(dsn, min_size=4, max_size=20)
        try:
            # Workers in their own processes (as `pao worker` runs them); the scheduler runs here.
            workers = [
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.lateness",
                    "--worker",
                    dsn,
                    "--concurrency",
                    str(concurrency),
                    "--seconds",
                    str(seconds + 90),
                )
                for _ in range(processes)
            ]
            async with db.acquire() as conn:
                # Warm-up: fires start once every worker process is up and LISTENing.
                while await conn.fetchval(LISTENING) < processes:
                    await asyncio.sleep(0.1)
                now = await conn.fetchval("SELECT now()")
            first = now.replace(microsecond=0) + timedelta(seconds=2)
            await insert_tasks(db, tasks, first, overlap)
            scheduler = Scheduler(db, dsn=dsn)
            loop = asyncio.create_task(scheduler.run())
            await asyncio.sleep((first - now).total_seconds() + seconds)
            await scheduler.stop()
            await loop
            await drain(db, timeout=60)
            for proc in workers:
                proc.terminate()
                await proc.wait()
            async with db.acquire() as conn:
                late = await conn.fetch(
                    "SELECT extract(epoch FROM started_at - scheduled_for) * 1000 AS ms FROM runs "
                    "WHERE started_at IS NOT NULL"
                )
                counts = await conn.fetchrow(
                    """
                    WITH per_task AS (
                        SELECT task_id, count(*) AS recorded, count(DISTINCT scheduled_for) AS distinct_fires,
                               extract(epoch FROM max(scheduled_for) - min(scheduled_for))::int + 1 AS expected
                        FROM runs GROUP BY task_id
                    )
                    SELECT sum(expected)::int AS expected, sum(recorded)::int AS recorded,
                           sum(distinct_fires)::int AS distinct_fires, count(*)::int AS tasks_fired,
                           (SELECT count(*) FROM runs WHERE status = 'skipped')::int AS skipped,
                           (SELECT count(*) FROM runs WHERE status = 'succeeded')::int AS succeeded,
                           (SELECT count(*) FROM runs WHERE status NOT IN ('succeeded', 'skipped'))::int AS other
                    FROM per_task
                    """
                )
            stats = percentiles([float(r["ms"]) for r in late])
            return stats, {**dict(counts), "passes": scheduler.passes}
        finally:
            await db.close()


async def drain(db: asyncpg.Pool, *, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        async with db.acquire() as conn:
            if not await conn.fetchval("SELECT count(*) FROM runs WHERE status IN ('queued', 'running')"):
                return
        await asyncio.sleep(0.2)


async def run_apscheduler(tasks: int, seconds: float) -> dict[str, float]:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    lateness: list[float] = []

    async def job() -> None:
        now = time.time()
        # The job's scheduled second; a per-second job is late by less than its 1 s misfire grace.
        lateness.append((now - math.floor(now)) * 1000)

    scheduler = AsyncIOScheduler(timezone="Europe/Chisinau")
    for _ in range(tasks):
        scheduler.add_job(job, CronTrigger(second="*", timezone="Europe/Chisinau"), misfire_grace_time=1)
    scheduler.start()
    await asyncio.sleep(seconds + 0.5)
    scheduler.shutdown(wait=False)
    return percentiles(lateness)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--concurrency", type=int, default=1000, help="runs in flight per worker process")
    parser.add_argument("--processes", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--overlap",
        default="allow",
        choices=["skip", "queue", "cancel_previous", "allow"],
        help="the tasks' overlap_policy (default allow: every fire runs; skip: a fire whose previous run is still "
        "active is recorded as skipped instead)",
    )
    parser.add_argument("--worker", metavar="DSN", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        settle_heap()  # as `pao worker` does before its loop starts
        await run_worker(args.worker, args.concurrency, args.seconds)
        return

    print(
        f"{args.tasks} tasks firing every second for {args.seconds:.0f} s on {os.cpu_count()} CPUs; "
        f"{args.processes} worker process(es) x {args.concurrency} slots"
    )
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        pao, fired = await run_pao(admin_dsn, args.tasks, args.seconds, args.concurrency, args.processes, args.overlap)
    peer = await run_apscheduler(args.tasks, args.seconds)
    print()
    print(f"{'lateness (ms)':<28}{'count':>9}{'p50':>9}{'p90':>9}{'p99':>9}{'max':>9}")
    for label, s in (("pao (Postgres + worker)", pao), ("APScheduler 3 (in memory)", peer)):
        print(f"{label:<28}{s['count']:>9.0f}{s['p50']:>9.1f}{s['p90']:>9.1f}{s['p99']:>9.1f}{s['max']:>9.1f}")
    print(f"{'ratio pao / peer':<28}{'':>9}{pao['p50'] / peer['p50']:>9.2f}{'':>9}{pao['p99'] / peer['p99']:>9.2f}")
    print()
    print(
        f"fires: expected {fired['expected']}, recorded {fired['recorded']} "
        f"({fired['distinct_fires']} distinct, {fired['tasks_fired']} tasks); "
        f"succeeded {fired['succeeded']}, skipped {fired['skipped']}, other {fired['other']}; "
        f"dropped {fired['expected'] - fired['distinct_fires']}, "
        f"doubled {fired['recorded'] - fired['distinct_fires']}; "
        f"scheduler passes {fired['passes']}"
    )


if __name__ == "__main__":
    asyncio.run(main())
