"""`python -m bench`: every figure, each next to its peer measured in the same invocation, as one table.

    .venv/bin/pip install -e '.[bench]'   # the peers: pgqueuer, APScheduler
    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench [--quick] [--only NAME ...]

Without DATABASE_URL one embedded Postgres is started for the whole invocation. Every figure
creates its own scratch database on it (pao_orchestrator.store's scratch helpers, which the tests
use too) and drops it. `--quick` runs every figure small (under 2 minutes, a CI smoke); the default
sizes are those of the README's table. Each figure's own script (bench/<name>.py) prints more
detail and takes more options.

The figures are a registry, FIGURES: one entry per figure, naming what it measures and how, and
an async `measure(ctx)` returning table rows, which calls the measuring functions of the figure's
own script (bench/<name>.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pao_orchestrator.process import settle_heap
from pao_orchestrator.store import postgres_server


@dataclass(frozen=True)
class Context:
    """What every figure gets: the admin DSN of the Postgres server to make scratch databases on, and the size."""

    admin_dsn: str
    quick: bool


@dataclass(frozen=True)
class Row:
    """One line of the table: what was measured, pao's figure, the peer and its figure, their ratio, how."""

    figure: str
    pao: str
    peer: str
    peer_value: str
    ratio: str
    how: str


@dataclass(frozen=True)
class Figure:
    name: str
    measure: Callable[[Context], Awaitable[list[Row]]]


def _p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}" if b else "-"


async def throughput(ctx: Context) -> list[Row]:
    from bench import throughput as t

    jobs, rounds = (2_000, 1) if ctx.quick else (20_000, 3)
    ours, peer = [], []
    for _ in range(rounds):  # alternating, so machine noise hits both alike
        ours.append(await t.pao_round(ctx.admin_dsn, jobs, 1, 256))
        peer.append(await t.pgqueuer_round(ctx.admin_dsn, jobs, 5, 10))
    mine, theirs = statistics.median(ours), statistics.median(peer)
    return [
        Row(
            "runs/s, draining a no-op backlog",
            f"{mine:,.0f}",
            "pgqueuer drain",
            f"{theirs:,.0f}",
            _ratio(mine, theirs),
            f"{jobs:,} jobs, median of {rounds}; 1 pao worker x 256 vs 5 consumers x batch 10",
        )
    ]


async def lateness(ctx: Context) -> list[Row]:
    from bench import lateness as late

    tasks, seconds = 1000, (5.0 if ctx.quick else 20.0)
    ours, fired = await late.run_pao(ctx.admin_dsn, tasks, seconds, 1000, 1, "allow")
    peer = await late.run_apscheduler(tasks, seconds)
    dropped = fired["expected"] - fired["distinct_fires"]
    doubled = fired["recorded"] - fired["distinct_fires"]
    how = f"{tasks:,} crons every second for {seconds:.0f} s; {dropped} dropped, {doubled} doubled"
    return [
        Row(
            "fire lateness p50, ms",
            f"{ours['p50']:.1f}",
            "APScheduler 3 (memory)",
            f"{peer['p50']:.1f}",
            _ratio(ours["p50"], peer["p50"]),
            how,
        ),
        Row(
            "fire lateness p99, ms",
            f"{ours['p99']:.1f}",
            "APScheduler 3 (memory)",
            f"{peer['p99']:.1f}",
            _ratio(ours["p99"], peer["p99"]),
            "started_at - scheduled_for (Postgres clock) vs job start - its second",
        ),
    ]


async def step_overhead(ctx: Context) -> list[Row]:
    from bench import step_overhead as step

    calls = 100 if ctx.quick else 1000
    timings = await step.measure(ctx.admin_dsn, calls)
    bare = statistics.median(timings["bare"])
    pool, whole = statistics.median(timings["pool"]), statistics.median(timings["step"])
    how = f"{calls:,} calls of mcp-server-time over stdio, interleaved"
    return [
        Row("step: pool call p50, ms", f"{pool:.2f}", "bare SDK session", f"{bare:.2f}", _ratio(pool, bare), how),
        Row(
            "step: whole durable run p50, ms",
            f"{whole:.2f}",
            "bare SDK session",
            f"{bare:.2f}",
            _ratio(whole, bare),
            "render, schema check, call, step and run recorded in Postgres",
        ),
    ]


async def http_latency(ctx: Context) -> list[Row]:
    from bench import http_latency as http

    calls = 100 if ctx.quick else 500
    timings = await http.measure(ctx.admin_dsn, calls)
    ours, peer = timings["pao"], timings["peer"]
    how = f"{calls:,} calls each over streamable HTTP, interleaved; pao get_task (bearer token) vs SDK echo"
    return [
        Row(
            "tool call p50, ms",
            f"{statistics.median(ours):.2f}",
            "bare SDK server",
            f"{statistics.median(peer):.2f}",
            _ratio(statistics.median(ours), statistics.median(peer)),
            how,
        ),
        Row(
            "tool call p99, ms",
            f"{_p(ours, 0.99):.2f}",
            "bare SDK server",
            f"{_p(peer, 0.99):.2f}",
            _ratio(_p(ours, 0.99), _p(peer, 0.99)),
            "same calls",
        ),
    ]


async def scale(ctx: Context) -> list[Row]:
    from bench import scale as sc

    small, large = 1_000, 100_000
    (b_small, b_large), steadies = await sc.measure(ctx.admin_dsn, small, large, 0.0 if ctx.quick else 10.0)
    rows = [
        Row(
            "scheduler us/fire, burst, 100k tasks",
            f"{b_large['us_per_fire']:.0f}",
            "same, 1k tasks",
            f"{b_small['us_per_fire']:.0f}",
            _ratio(b_large["us_per_fire"], b_small["us_per_fire"]),
            "every task due at once, drained in passes of 1,000",
        ),
        Row(
            "scheduler RSS peak MB, 100k tasks",
            f"{b_large['rss_peak']:.0f}",
            "same, 1k tasks",
            f"{b_small['rss_peak']:.0f}",
            _ratio(b_large["rss_peak"], b_small["rss_peak"]),
            "the process's RSS, sampled every 50 ms during the burst",
        ),
    ]
    if steadies is not None:
        s_small, s_large = steadies
        rows.append(
            Row(
                "scheduler us/fire, steady, 100k tasks",
                f"{s_large['us_per_fire']:.0f}",
                "same, 1k tasks",
                f"{s_small['us_per_fire']:.0f}",
                _ratio(s_large["us_per_fire"], s_small["us_per_fire"]),
                "1k tasks firing once a minute, the rest idle; 10 s loop",
            )
        )
    return rows


async def event_to_run(ctx: Context) -> list[Row]:
    from bench import events as ev

    count = 50 if ctx.quick else 300
    paths = dict(await ev.measure_latency(ctx.admin_dsn, count))
    stdio, peer = paths["`pao serve` over stdio -> started_at"], paths["  peer: its get_event round trip"]
    how = f"{count} events over `pao serve` stdio, each starting one run; peer: a get_event round trip on it"
    rows = [
        Row("event to run start p50, ms", f"{_p(stdio, 0.5):.2f}", "MCP round trip", f"{_p(peer, 0.5):.2f}",
            _ratio(_p(stdio, 0.5), _p(peer, 0.5)), how),
        Row("event to run start p99, ms", f"{_p(stdio, 0.99):.2f}", "MCP round trip", f"{_p(peer, 0.99):.2f}",
            _ratio(_p(stdio, 0.99), _p(peer, 0.99)), "runs.started_at - the wall clock at publish"),
    ]  # fmt: skip
    events, tasks, rounds = (20, 20, 1) if ctx.quick else (100, 20, 3)
    mine, theirs = await ev.fanout(ctx.admin_dsn, events, tasks, rounds, 64)
    rows.append(
        Row(
            "event fan-out runs/s",
            f"{mine:,.0f}",
            "pgqueuer drain",
            f"{theirs:,.0f}",
            _ratio(mine, theirs),
            f"{events} events x {tasks} matching tasks, median of {rounds}; pgqueuer: the same jobs enqueued",
        )
    )
    return rows


FIGURES: list[Figure] = [
    Figure("throughput", throughput),
    Figure("lateness", lateness),
    Figure("event_to_run", event_to_run),
    Figure("step_overhead", step_overhead),
    Figure("http_latency", http_latency),
    Figure("scale", scale),
]


def render(rows: list[Row]) -> str:
    header = Row("figure", "pao", "peer", "peer value", "ratio", "how")
    table = [header, *rows]
    widths = [max(len(getattr(r, f)) for r in table) for f in ("figure", "pao", "peer", "peer_value", "ratio")]
    lines = []
    for r in table:
        cells = (r.figure, r.pao, r.peer, r.peer_value, r.ratio)
        left = f"{cells[0]:<{widths[0]}}  {cells[1]:>{widths[1]}}  {cells[2]:<{widths[2]}}  "
        lines.append(f"{left}{cells[3]:>{widths[3]}}  {cells[4]:>{widths[4]}}  {r.how}")
    return "\n".join(lines)


async def run(names: list[str], quick: bool) -> list[Row]:
    rows: list[Row] = []
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        ctx = Context(admin_dsn=admin_dsn, quick=quick)
        for figure in FIGURES:
            if names and figure.name not in names:
                continue
            started = time.perf_counter()
            print(f"measuring {figure.name} ...", file=sys.stderr, flush=True)
            try:
                rows += await figure.measure(ctx)
            except Exception as exc:  # one figure failing does not lose the others
                rows.append(Row(figure.name, "failed", "-", "-", "-", f"{type(exc).__name__}: {exc}"))
            print(f"  {figure.name}: {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="every figure small: under 2 minutes (CI smoke)")
    parser.add_argument("--only", nargs="*", default=[], choices=[f.name for f in FIGURES], help="these figures")
    args = parser.parse_args()
    started = time.perf_counter()
    # As `pao serve` does before its loop starts (pao_orchestrator.process): publishers and schedulers
    # measured in this process run as they would in pao's. The in-process peers (pgqueuer's consumers,
    # APScheduler) run in this same process and gain alike.
    settle_heap()
    rows = asyncio.run(run(args.only, args.quick))
    print(
        f"python -m bench{' --quick' if args.quick else ''}: {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{'DATABASE_URL' if os.environ.get('DATABASE_URL') else 'embedded Postgres'}; "
        f"{time.perf_counter() - started:.0f} s"
    )
    print(render(rows))
    return 1 if any(r.pao == "failed" for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
