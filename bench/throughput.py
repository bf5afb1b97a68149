"""Run throughput: pao's workers next to pgqueuer's, against the same Postgres, in one invocation.

Both sides drain the same backlog of no-op jobs (pgqueuer's own "drain" benchmark strategy):
pao runs whose pipeline is one built-in `pao.noop` step (claim, execute, record the step and the
run), pgqueuer jobs whose entrypoint does nothing (dequeue, execute, log the completion). Rounds
alternate between the two so that machine noise hits both alike; the table shows every round, the
medians and the ratio.

    .venv/bin/pip install pgqueuer   # the peer; not a dependency of pao
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/throughput.py

Without DATABASE_URL an embedded Postgres is started for the benchmark.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pao_orchestrator.engine import Settings, open_engine
from pao_orchestrator.store import postgres_server, scratch_database


async def pao_round(admin_dsn: str, jobs: int, workers: int, concurrency: int) -> float:
    """Runs per second for `workers` pao worker processes draining `jobs` noop runs."""
    async with scratch_database(admin_dsn, prefix="pao_bench_throughput") as url:
        return await _pao_round(url, jobs, workers, concurrency)


async def _pao_round(url: str, jobs: int, workers: int, concurrency: int) -> float:
    data_dir = Path(tempfile.mkdtemp(prefix="pao-bench-"))
    (data_dir / "none.json").write_text('{"mcpServers": {}}')  # no downstream server, and pao says none
    settings = Settings(database_url=url, data_dir=data_dir, mcp_config=data_dir / "none.json")
    async with open_engine(settings, run_worker=False) as engine:
        created = await engine.create_task(
            engine.owner,
            {
                "title": "noop",
                "schedule_kind": "event",
                "schedule_expr": "bench.noop",
                "payload": {"pipeline": [{"id": "noop", "uses": "pao.noop", "with": {}}]},
            },
        )
        async with engine.db.acquire() as conn:
            # Setup, not measured: the backlog, as run_now would leave it.
            await conn.execute(
                "INSERT INTO runs (task_id, trigger, max_attempts) SELECT $1, 'manual', 1 FROM generate_series(1, $2)",
                created.task.id,
                jobs,
            )
            await conn.execute("ANALYZE runs")
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PAO_DATA_DIR": str(data_dir),
        "PAO_MCP_CONFIG": str(data_dir / "none.json"),
        "PAO_LOG_LEVEL": "WARNING",
    }
    # The engine's own drain, as the fan-out figure measures it: with REDIS_URL set every run's end is
    # also mirrored to the Redis stream (the bridge's own figure is in bench/events.py).
    env.pop("REDIS_URL", None)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "pao_orchestrator.server.cli", "worker", "--concurrency", str(concurrency)],
            env=env,
            cwd=ROOT,
        )
        for _ in range(workers)
    ]
    conn = await asyncpg.connect(url)
    try:
        deadline = time.monotonic() + 600
        while await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'succeeded'") < jobs:
            if time.monotonic() > deadline:
                raise TimeoutError("pao did not drain the backlog in 10 minutes")
            await asyncio.sleep(0.05)
        # Measured in the database, from the first claim to the last completion: process start-up is not counted.
        span = await conn.fetchval(
            "SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM runs WHERE status = 'succeeded'"
        )
    finally:
        await conn.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)
    return jobs / float(span)


async def pgqueuer_round(admin_dsn: str, jobs: int, dequeue: int, batch: int) -> float:
    """Jobs per second for pgqueuer's drain strategy: `dequeue` consumers with batch size `batch`."""
    async with scratch_database(admin_dsn, prefix="pgq_bench_throughput") as url:
        return await _pgqueuer_round(url, jobs, dequeue, batch)


async def _pgqueuer_round(url: str, jobs: int, dequeue: int, batch: int) -> float:
    from pgqueuer import PgQueuer, types
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    subprocess.run(
        [sys.executable, "-m", "pgqueuer", "install"],
        check=True,
        capture_output=True,
        env={**os.environ, "PGDSN": url},
    )
    setup = await asyncpg.connect(url)
    await Queries(AsyncpgDriver(setup)).enqueue(["noop"] * jobs, [b""] * jobs, [0] * jobs)
    await setup.execute("ANALYZE")
    await setup.close()
    connections = [await asyncpg.connect(url) for _ in range(dequeue)]
    consumers = [PgQueuer(AsyncpgDriver(conn)) for conn in connections]
    for consumer in consumers:

        @consumer.entrypoint("noop")
        async def noop(job: Job) -> None:
            return None

    started = time.perf_counter()
    await asyncio.gather(*(c.run(batch_size=batch, mode=types.QueueExecutionMode.drain) for c in consumers))
    elapsed = time.perf_counter() - started
    for conn in connections:
        await conn.close()
    return jobs / elapsed


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=1, help="pao worker processes")
    parser.add_argument("--concurrency", type=int, default=64, help="runs in flight per pao worker")
    parser.add_argument("--dequeue", type=int, default=5, help="pgqueuer consumers (its benchmark's default)")
    parser.add_argument("--batch", type=int, default=10, help="pgqueuer dequeue batch size (its default)")
    args = parser.parse_args()

    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        ours: list[float] = []
        peer: list[float] = []
        print(
            f"{args.jobs} no-op jobs per round; pao: {args.workers} worker(s) x {args.concurrency} in flight; "
            f"pgqueuer: {args.dequeue} consumers x batch {args.batch}"
        )
        print(f"{'round':>5}  {'pao runs/s':>11}  {'pgqueuer jobs/s':>15}")
        for round_no in range(1, args.rounds + 1):
            ours.append(await pao_round(admin_dsn, args.jobs, args.workers, args.concurrency))
            peer.append(await pgqueuer_round(admin_dsn, args.jobs, args.dequeue, args.batch))
            print(f"{round_no:>5}  {ours[-1]:>11.0f}  {peer[-1]:>15.0f}")
        mine, theirs = statistics.median(ours), statistics.median(peer)
        print(f"{'median':>5}  {mine:>11.0f}  {theirs:>15.0f}")
        print(f"ratio pao / pgqueuer: {mine / theirs:.2f}")


if __name__ == "__main__":
    asyncio.run(main())
