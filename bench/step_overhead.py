"""What a pipeline step adds on top of a bare MCP call, against the real `mcp-server-time` over stdio.

Three ways to make the same call (`get_current_time`), interleaved call by call so that machine
noise hits all of them alike:

  bare      the SDK's own `Client` session, the floor;
  pool      pao's downstream pool (`DownstreamPool.call_tool`): session reuse, output parsing,
            error mapping;
  step      a whole one-step run as a worker executes it once claimed: render `with`, check the
            arguments against the tool's schema, record the step as running, call through the pool,
            record the step's outcome and the run's end in Postgres (durably, before it returns).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/step_overhead.py

Without DATABASE_URL an embedded Postgres is started (only the `step` column uses it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from mcp import Client, StdioServerParameters

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pao_orchestrator.engine.app import Tools
from pao_orchestrator.engine.downstream import DownstreamPool, Registry
from pao_orchestrator.engine.runtime import Executor, RunHandle, lease_clock
from pao_orchestrator.store import ClaimedRun, create_pool, postgres_server, scratch_database
from pao_orchestrator.vocabulary import Outcome

SERVER = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
ARGS = {"timezone": "Europe/Chisinau"}


async def held_run(db: asyncpg.Pool, worker: str, payload: dict[str, Any]) -> ClaimedRun:
    """A run row as the claim hands it to `worker` (setup, not timed)."""
    async with db.acquire() as conn:
        owner = await conn.fetchval(
            "INSERT INTO agents (name) VALUES ($1) RETURNING id", f"bench-{uuid.uuid4().hex[:6]}"
        )
        task = await conn.fetchval(
            "INSERT INTO tasks (title, schedule_kind, schedule_expr, payload, created_by)"
            " VALUES ('bench', 'event', 'bench', '{}', $1) RETURNING id",
            owner,
        )
        row = await conn.fetchrow(
            "INSERT INTO runs (task_id, trigger, status, lease_owner, lease_expires_at)"
            " VALUES ($1, 'manual', 'running', $2, now() + interval '1 hour') RETURNING *",
            task,
            worker,
        )
    # The step's template reads the zone from the trigger, as a scheduled or event run would.
    return ClaimedRun.from_row(
        {
            **dict(row),
            "resume": False,
            "task_title": "bench",
            "task_payload": payload,
            "task_updated_at": row["created_at"],
            "trigger_data": {"tz": "Europe/Chisinau"},
            "backoff_strategy": "none",
            "backoff_base_seconds": 0.0,
            "backoff_max_seconds": 0.0,
        }
    )


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(admin_dsn: str, calls: int) -> dict[str, list[float]]:
    """Milliseconds per call of each path (bare, pool, step), interleaved call by call."""
    async with scratch_database(admin_dsn, prefix="pao_bench_step", migrated=True) as url:
        db = await create_pool(url, max_size=4)
        try:
            return await _measure(db, calls)
        finally:
            await db.close()


async def _measure(db: asyncpg.Pool, calls: int) -> dict[str, list[float]]:
    registry = Registry.from_dict({"mcpServers": {"time": SERVER}})
    worker = "bench-worker"
    timings: dict[str, list[float]] = {"bare": [], "pool": [], "step": []}
    async with (
        Client(StdioServerParameters(**SERVER)) as bare,  # type: ignore[arg-type]
        DownstreamPool(registry, environ=os.environ) as pool,
    ):
        executor = Executor(db, Tools(registry, pool), worker=worker, secrets={})
        payload = {"pipeline": [{"id": "now", "uses": "time.get_current_time", "with": {"timezone": "${trigger.tz}"}}]}

        async def call_bare() -> None:
            result = await bare.call_tool("get_current_time", ARGS)
            assert not result.is_error

        async def call_pool() -> None:
            result = await pool.call_tool("time", "get_current_time", ARGS)
            assert not result.is_error

        runs = [await held_run(db, worker, payload) for _ in range(calls + 20)]

        async def call_step() -> None:
            # As the worker hands over a run it just claimed: its lease known to run for an hour.
            handle = RunHandle(runs.pop(), lease_seconds=3600, held_until=lease_clock() + 3600)
            assert await executor.execute(handle) == Outcome.SUCCEEDED

        # Warm up: sessions open, tool lists cached, statements prepared.
        for fn in (call_bare, call_pool, call_step):
            for _ in range(20):
                await fn()
        for _ in range(calls):
            for label, fn in (("bare", call_bare), ("pool", call_pool), ("step", call_step)):
                started = time.perf_counter()
                await fn()
                timings[label].append((time.perf_counter() - started) * 1000)
    return timings


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=1000)
    args = parser.parse_args()
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        timings = await measure(admin_dsn, args.calls)
    base = statistics.median(timings["bare"])
    print(f"{args.calls} sequential calls of time.get_current_time over stdio, interleaved")
    print(f"{'path':<6} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'p50 / bare':>11}")
    for label, values in timings.items():
        p50 = statistics.median(values)
        print(f"{label:<6} {p50:>8.3f} {pct(values, 0.9):>8.3f} {pct(values, 0.99):>8.3f} {p50 / base:>11.2f}")


if __name__ == "__main__":
    asyncio.run(main())
