"""CPU a `pao worker` spends per run, this checkout against another one, in alternating rounds.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.worker_cpu \
        --before /path/to/other/checkout [--runs 20000] [--rounds 6] [--concurrency 256]

Each round drains a backlog of --runs one-step `pao.noop` runs with one `pao worker` process of one
checkout (its own .venv), on a fresh database. It reports the worker's user + system CPU from its
first claim to its last completion, divided by the runs, and the rate measured in the database
(first claim to last completion). On a shared machine the rate moves with everybody else's load;
the CPU a run costs moves much less, so it is the figure to compare when a change should cost
nothing per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import tempfile
from pathlib import Path

import asyncpg
import psutil

from pao_orchestrator.store import postgres_server, scratch_database

ROOT = Path(__file__).resolve().parent.parent
NOOP = {"pipeline": [{"id": "noop", "uses": "pao.noop", "with": {}}]}


async def drain(checkout: Path, admin_dsn: str, runs: int, concurrency: int) -> tuple[float, float]:
    """(worker CPU microseconds per run, runs per second) for one round with `checkout`'s code."""
    async with scratch_database(admin_dsn, prefix="pao_bench_cpu") as url:
        return await _drain(checkout, url, runs, concurrency)


async def _drain(checkout: Path, url: str, runs: int, concurrency: int) -> tuple[float, float]:
    data = tempfile.mkdtemp(prefix="pao-bench-")
    (Path(data) / "none.json").write_text('{"mcpServers": {}}')
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PAO_DATA_DIR": data,
        "PAO_MCP_CONFIG": str(Path(data) / "none.json"),
        "PAO_LOG_LEVEL": "WARNING",
    }
    python = str(checkout / ".venv" / "bin" / "python")
    migrate = [python, "-m", "pao_orchestrator.server.cli", "migrate"]
    subprocess.run(migrate, env=env, cwd=checkout, check=True, capture_output=True)
    conn = await asyncpg.connect(url)
    owner = await conn.fetchval("INSERT INTO agents (name) VALUES ('bench') RETURNING id")
    task = await conn.fetchval(
        "INSERT INTO tasks (title, schedule_kind, schedule_expr, payload, created_by)"
        " VALUES ('noop', 'event', 'bench.noop', $1, $2) RETURNING id",
        json.dumps(NOOP),
        owner,
    )
    await conn.execute(
        "INSERT INTO runs (task_id, trigger, max_attempts) SELECT $1, 'manual', 1 FROM generate_series(1, $2)",
        task,
        runs,
    )
    await conn.execute("ANALYZE runs")
    worker = subprocess.Popen(
        [python, "-m", "pao_orchestrator.server.cli", "worker", "--concurrency", str(concurrency)],
        env=env,
        cwd=checkout,
    )
    process = psutil.Process(worker.pid)
    try:
        # Start-up is not counted: CPU from the first claim on.
        while not await conn.fetchval("SELECT count(*) FROM runs WHERE status <> 'queued'"):
            await asyncio.sleep(0.01)
        before = sum(process.cpu_times()[:2])
        while await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'succeeded'") < runs:
            await asyncio.sleep(0.05)
        spent = sum(process.cpu_times()[:2]) - before
        span = await conn.fetchval("SELECT extract(epoch FROM max(finished_at) - min(started_at)) FROM runs")
    finally:
        worker.terminate()
        worker.wait(timeout=30)
        await conn.close()
    return spent / runs * 1e6, runs / float(span)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True, help="the other checkout (with its own .venv)")
    parser.add_argument("--runs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=256)
    args = parser.parse_args()
    checkouts = {"before": args.before.resolve(), "this": ROOT}
    results: dict[str, list[tuple[float, float]]] = {"before": [], "this": []}
    print(f"{args.runs} no-op runs per round, one worker x {args.concurrency}; before: {checkouts['before']}")
    print(f"{'round':<12}{'CPU us/run':>12}{'runs/s':>10}")
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        for number in range(1, args.rounds + 1):
            for label, checkout in checkouts.items():
                cpu, rate = await drain(checkout, admin_dsn, args.runs, args.concurrency)
                results[label].append((cpu, rate))
                print(f"{number} {label:<10}{cpu:>12.1f}{rate:>10.0f}", flush=True)
    print()
    for label, values in results.items():
        cpu = statistics.median(c for c, _ in values)
        rate = statistics.median(r for _, r in values)
        print(f"median {label:<6}{cpu:>11.1f}{rate:>10.0f}")


if __name__ == "__main__":
    asyncio.run(main())
