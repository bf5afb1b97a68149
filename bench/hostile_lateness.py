"""Lateness of healthy tasks while one task renders a hostile template, against the same without it.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.hostile_lateness \
        [--tasks 100] [--seconds 20] [--rounds 3] [--size 8000] [--before /path/to/other/checkout]

Each round is one `pao worker`-shaped process (scheduler, worker and template renderer, as
`open_engine` starts them) on a fresh database holding N tasks with the 6-field cron
`* * * * * *` and a one-step `pao.noop` pipeline whose argument is a simple template
(`${trigger.scheduled_for}`). In the rounds "with hostile", one more task fires every second with a
template that loops over --size characters --size times (8000: about 3 s of rendering; a million:
forever). Here its renders run into the 1 s deadline (PAO_RENDER_TIMEOUT_SECONDS) and their render
process is killed and replaced. The rounds alternate (without, with, without, ...) so that the
machine's other load falls on both alike; the table shows the median of the rounds.

--before runs the same rounds with the code of another checkout (its own .venv), alternating with
this one, e.g. the main branch before templates were isolated.

Lateness is runs.started_at - runs.scheduled_for of the healthy tasks, both written by Postgres.
"loop lag" is the longest delay a 10 ms ticker in the process saw: what every heartbeat, tool call
and claim in that process waited at worst.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
from datetime import timedelta
from pathlib import Path
from typing import Any

import asyncpg

from bench.lateness import fresh_database, percentiles
from pao_orchestrator.engine import Settings, open_engine
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.store import postgres_server

ROOT = Path(__file__).resolve().parent.parent
HEALTHY = {"pipeline": [{"id": "tick", "uses": "pao.noop", "with": {"at": "${trigger.scheduled_for}"}}]}


def hostile(size: int) -> dict[str, Any]:
    loop = "${% for x in 'a' * N %}${% for y in 'a' * N %}${% endfor %}${% endfor %}".replace("N", str(size))
    return {"pipeline": [{"id": "spin", "uses": "pao.noop", "with": {"v": loop}}]}


async def insert_tasks(db: asyncpg.Pool, count: int, first: Any, size: int | None) -> None:
    async with db.acquire() as conn:
        owner = await agent_store.ensure_owner(conn)
        insert = """
            INSERT INTO tasks (title, schedule_kind, schedule_expr, timezone, payload, status, next_fire_at,
                               created_by, created_at, overlap_policy, max_retries)
            SELECT $5 || i, 'cron', '* * * * * *', 'UTC', $1, 'active', $2, $3, now(), $6, 0
            FROM generate_series(1, $4) AS i
        """
        await conn.execute(insert, HEALTHY, first, owner.id, count, "healthy ", "allow")
        if size is not None:
            await conn.execute(insert, hostile(size), first, owner.id, 1, "hostile ", "skip")


async def one_round(tasks: int, seconds: float, size: int | None) -> dict[str, Any]:
    """One round in this process: `size` None runs no hostile task."""
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        return await round_on(admin_dsn, tasks, seconds, size)


async def round_on(admin_dsn: str, tasks: int, seconds: float, size: int | None) -> dict[str, Any]:
    config = Path(tempfile.mkdtemp()) / "mcp.json"
    config.write_text(json.dumps({"mcpServers": {}}))
    async with fresh_database(admin_dsn) as dsn:
        # Enough slots for a second's fires, so lateness measures the process, not a queue for slots.
        settings = Settings(
            database_url=dsn, mcp_config=config, data_dir=Path(tempfile.mkdtemp()), worker_concurrency=tasks + 16
        )
        async with open_engine(settings) as engine:
            lags: list[float] = []

            async def tick() -> None:
                loop = asyncio.get_running_loop()
                while True:
                    before = loop.time()
                    await asyncio.sleep(0.01)
                    lags.append(loop.time() - before - 0.01)

            ticker = asyncio.create_task(tick())
            async with engine.db.acquire() as conn:
                now = await conn.fetchval("SELECT now()")
            first = now.replace(microsecond=0) + timedelta(seconds=2)
            await insert_tasks(engine.db, tasks, first, size)
            await asyncio.sleep((first - now).total_seconds() + seconds)
            async with engine.db.acquire() as conn:
                await conn.execute("UPDATE tasks SET status = 'paused'")
                late = await conn.fetch(
                    "SELECT extract(epoch FROM r.started_at - r.scheduled_for) * 1000 AS ms FROM runs r "
                    "JOIN tasks t ON t.id = r.task_id WHERE t.title LIKE 'healthy %' AND r.started_at IS NOT NULL "
                    "AND r.scheduled_for < $1",
                    first + timedelta(seconds=seconds),
                )
                spun = await conn.fetchrow(
                    "SELECT count(*) FILTER (WHERE r.started_at IS NOT NULL) AS runs, "
                    "count(*) FILTER (WHERE r.error LIKE '%did not finish rendering within%') AS timed_out "
                    "FROM runs r JOIN tasks t ON t.id = r.task_id WHERE t.title LIKE 'hostile %'"
                )
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
            return {
                **percentiles([float(r["ms"]) for r in late] or [0.0]),
                "lag": max(lags) * 1000,
                "expected": tasks * int(seconds),
                "hostile_runs": spun["runs"],
                "timed_out": spun["timed_out"],
            }


async def round_elsewhere(before: Path, tasks: int, seconds: float, size: int | None) -> dict[str, Any]:
    """One round with the code of another checkout: this script, run by that checkout's interpreter."""
    command = [str(before / ".venv" / "bin" / "python"), "-m", "bench.hostile_lateness", "--one-round"]
    command += ["--tasks", str(tasks), "--seconds", str(seconds)]
    if size is not None:
        command += ["--size", str(size)]
    process = await asyncio.create_subprocess_exec(*command, cwd=ROOT, stdout=asyncio.subprocess.PIPE)
    out, _ = await process.communicate()
    result: dict[str, Any] = json.loads(out.decode().strip().splitlines()[-1])
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each kind, alternating")
    parser.add_argument("--size", type=int, default=8000, help="the hostile template loops size x size times")
    parser.add_argument("--before", type=Path, help="also run the rounds with this checkout's code, alternating")
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one_round:
        print(json.dumps(await one_round(args.tasks, args.seconds, args.size if args.size else None)))
        return
    codes = ["this"] + (["before"] if args.before else [])
    print(
        f"{args.tasks} healthy tasks firing every second for {args.seconds:.0f} s, "
        f"{args.rounds} round(s) of each kind, alternating; hostile loops {args.size:,} x {args.size:,}; "
        f"{os.cpu_count()} CPUs"
    )
    if args.before:
        print(f"before: {args.before}")
    print(f"{'round':<30}{'healthy runs':>13}{'p50 ms':>9}{'p99 ms':>9}{'max ms':>9}{'loop lag ms':>13}  hostile task")
    results: dict[tuple[str, bool], list[dict[str, Any]]] = {}
    for number in range(args.rounds):
        for code in codes:
            for with_hostile in (False, True):
                size = args.size if with_hostile else None
                if code == "this":
                    r = await one_round(args.tasks, args.seconds, size)
                else:
                    r = await round_elsewhere(args.before, args.tasks, args.seconds, size or 0)
                results.setdefault((code, with_hostile), []).append(r)
                label = f"{number + 1} {code} {'with hostile' if with_hostile else 'without'}"
                spun = f"{r['hostile_runs']} runs, {r['timed_out']} timed out" if with_hostile else ""
                print(
                    f"{label:<30}{r['count']:>8.0f}/{r['expected']:<4}{r['p50']:>9.1f}{r['p99']:>9.1f}"
                    f"{r['max']:>9.1f}{r['lag']:>13.1f}  {spun}",
                    flush=True,
                )
    print()
    print(f"{'median of rounds':<30}{'p50 ms':>9}{'p99 ms':>9}{'loop lag ms':>13}")
    for (code, with_hostile), rs in results.items():
        print(
            f"{code + (' with hostile' if with_hostile else ' without'):<30}"
            f"{statistics.median(r['p50'] for r in rs):>9.1f}{statistics.median(r['p99'] for r in rs):>9.1f}"
            f"{statistics.median(r['lag'] for r in rs):>13.1f}"
        )
    sys.stdout.flush()


if __name__ == "__main__":
    asyncio.run(main())
