"""Events: event -> run start over MCP, fan-out next to pgqueuer, matching cost against the number of
event tasks, and the Redis bridge next to bare XADD. Each figure has its peer, measured in the same
invocation on the same Postgres (and Redis).

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.events [--only latency,fanout,matching,bridge]
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from mcp import Client, StdioServerParameters

from pao_orchestrator.engine import Engine, Settings, open_engine
from pao_orchestrator.engine.runtime import Relay
from pao_orchestrator.process import settle_heap
from pao_orchestrator.server.app import create_server
from pao_orchestrator.store import postgres_server, scratch_database, streams

RUN = uuid.uuid4().hex[:8]
NOOP = {"pipeline": [{"id": "noop", "uses": "pao.noop", "with": {}}]}


def fresh_database(admin_dsn: str, label: str) -> AbstractAsyncContextManager[str]:
    """A scratch database of this benchmark on the admin DSN's server (the store's shared helper)."""
    return scratch_database(admin_dsn, prefix=f"pao_bench_events_{label}")


def settings(url: str, **extra: Any) -> Settings:
    """Settings for an engine of this benchmark: no Redis bridge (REDIS_URL is for the bridge figures,
    which use streams of their own), so nothing is written to the default streams."""
    data_dir = Path(tempfile.mkdtemp(prefix="pao-bench-events-"))
    values: dict[str, Any] = {"redis_url": None, "log_level": "WARNING", **extra}
    (data_dir / "none.json").write_text('{"mcpServers": {}}')  # no downstream server, and pao says none
    return Settings(database_url=url, data_dir=data_dir, mcp_config=data_dir / "none.json", **values)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def event_task(engine: Engine, pattern: str) -> None:
    await engine.create_task(
        engine.owner, {"title": pattern, "schedule_kind": "event", "schedule_expr": pattern, "payload": NOOP}
    )


# --------------------------------------------------------------------------- event -> run start


async def _measure(client: Client, conn: asyncpg.Connection, count: int, topic: str) -> tuple[list[float], list[float]]:
    """(publish_event over `client` -> the run's started_at, ms; the peer: a get_event round trip, ms)."""
    first = await client.call_tool("publish_event", {"topic": "lat.warm", "data": {}})
    warm_id = first.structured_content["event_id"]  # type: ignore[index]
    starts: list[float] = []
    bare: list[float] = []
    for i in range(count):
        t0 = time.perf_counter()
        await client.call_tool("get_event", {"event_id": warm_id})
        bare.append((time.perf_counter() - t0) * 1000)
        wall = datetime.now(UTC)
        result = await client.call_tool("publish_event", {"topic": topic, "data": {"i": i}})
        run_id = uuid.UUID(result.structured_content["runs"][0]["run_id"])  # type: ignore[index]
        starts.append((await _started(conn, run_id) - wall).total_seconds() * 1000)
    return starts, bare


async def _started(conn: asyncpg.Connection, run_id: uuid.UUID) -> datetime:
    """When the run started (the database's clock), once it has ended: the next event finds the worker idle."""
    while True:
        row = await conn.fetchrow("SELECT status, started_at FROM runs WHERE id = $1", run_id)
        if row["status"] in ("succeeded", "failed"):
            return row["started_at"]  # type: ignore[no-any-return]
        await asyncio.sleep(0.002)


async def measure_latency(admin_dsn: str, count: int) -> list[tuple[str, list[float]]]:
    """Event -> run start, p-values per path: in process, engine-direct and `pao serve` over stdio."""
    rows: list[tuple[str, list[float]]] = []
    async with fresh_database(admin_dsn, "lat") as url:
        async with open_engine(settings(url)) as engine:
            await event_task(engine, "lat.ping")
            async with Client(create_server(engine)) as client, engine.db.acquire() as conn:
                starts, bare = await _measure(client, conn, count, "lat.ping")
                direct: list[float] = []
                for i in range(count):
                    wall = datetime.now(UTC)
                    done = await engine.publish_event(
                        engine.owner, topic="lat.ping", data={"i": i}, dedupe_key=None, source=None
                    )
                    direct.append((await _started(conn, done.runs[0].run_id) - wall).total_seconds() * 1000)
            rows += [
                ("in-process MCP session -> started_at", starts),
                ("  peer: its get_event round trip", bare),
                ("engine.publish_event -> started_at", direct),
            ]
        # `pao serve` over stdio, as an MCP client starts it: the real transport and its own process.
        data_dir = Path(tempfile.mkdtemp(prefix="pao-bench-events-"))
        env = {**os.environ, "DATABASE_URL": url, "PAO_DATA_DIR": str(data_dir), "PAO_LOG_LEVEL": "WARNING"}
        (data_dir / "none.json").write_text('{"mcpServers": {}}')
        env["PAO_MCP_CONFIG"] = str(data_dir / "none.json")
        env.pop("REDIS_URL", None)
        params = StdioServerParameters(
            command=sys.executable, args=["-m", "pao_orchestrator.server.cli", "serve"], env=env, cwd=str(data_dir)
        )
        async with Client(params) as client:
            conn = await asyncpg.connect(url)
            try:
                starts, bare = await _measure(client, conn, count, "lat.ping")
            finally:
                await conn.close()
        rows += [("`pao serve` over stdio -> started_at", starts), ("  peer: its get_event round trip", bare)]
    return rows


async def latency(admin_dsn: str, count: int) -> None:
    rows = await measure_latency(admin_dsn, count)
    print(f"\nevent -> run start ({count} events published one at a time over MCP, worker idle)")
    print(f"{'path':<40}{'p50 ms':>8}{'p90 ms':>8}{'p99 ms':>8}")
    for name, values in rows:
        print(f"{name:<40}{pct(values, 50):>8.2f}{pct(values, 90):>8.2f}{pct(values, 99):>8.2f}")


# --------------------------------------------------------------------------- fan-out


async def pao_fanout(admin_dsn: str, events: int, tasks: int, concurrency: int) -> float:
    async with fresh_database(admin_dsn, "fan") as url:
        async with open_engine(settings(url), run_worker=False) as engine:
            for _ in range(tasks):
                await event_task(engine, "fan.out")
            await event_task(engine, "fan.warm")
        env = {**os.environ, "DATABASE_URL": url, "PAO_MCP_CONFIG": "/nonexistent/mcp.json", "PAO_LOG_LEVEL": "WARNING"}
        env.pop("REDIS_URL", None)
        worker = subprocess.Popen(
            [sys.executable, "-m", "pao_orchestrator.server.cli", "worker", "--concurrency", str(concurrency)],
            env=env,
            cwd=ROOT,
        )
        try:
            async with open_engine(settings(url), run_worker=False) as engine:
                # Not measured: the worker process starts, and has run one event's run.
                warm = await engine.publish_event(engine.owner, topic="fan.warm", data={}, dedupe_key=None, source=None)
                async with engine.db.acquire() as conn:
                    while (
                        await conn.fetchval("SELECT status FROM runs WHERE id = $1", warm.runs[0].run_id) != "succeeded"
                    ):
                        await asyncio.sleep(0.02)
                for i in range(events):
                    await engine.publish_event(
                        engine.owner, topic="fan.out", data={"i": i}, dedupe_key=None, source=None
                    )
                async with engine.db.acquire() as conn:
                    total = events * tasks
                    deadline = time.monotonic() + 300
                    while await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'succeeded'") < total + 1:
                        if time.monotonic() > deadline:
                            raise TimeoutError("fan-out did not finish in 300 s")
                        await asyncio.sleep(0.02)
                    span = await conn.fetchval(
                        "SELECT extract(epoch FROM (SELECT max(r.finished_at) FROM runs r JOIN events e"
                        " ON e.id = r.event_id WHERE e.topic = 'fan.out')"
                        " - (SELECT min(created_at) FROM events WHERE topic = 'fan.out'))"
                    )
        finally:
            worker.terminate()
            worker.wait(timeout=30)
    return events * tasks / float(span)


async def pgqueuer_fanout(admin_dsn: str, events: int, tasks: int, dequeue: int, batch: int) -> float:
    from pgqueuer import PgQueuer
    from pgqueuer.db import AsyncpgDriver
    from pgqueuer.models import Job
    from pgqueuer.queries import Queries

    async with fresh_database(admin_dsn, "pgq") as url:
        subprocess.run(
            [sys.executable, "-m", "pgqueuer", "install"],
            check=True,
            capture_output=True,
            env={**os.environ, "PGDSN": url},
        )
        total = events * tasks
        done = 0
        finished = asyncio.Event()
        connections = [await asyncpg.connect(url) for _ in range(dequeue)]
        consumers = [PgQueuer(AsyncpgDriver(c)) for c in connections]
        for consumer in consumers:

            @consumer.entrypoint("noop")
            async def noop(job: Job) -> None:
                nonlocal done
                done += 1
                if done >= total:
                    finished.set()

        running = [asyncio.create_task(c.run(batch_size=batch)) for c in consumers]
        producer = await asyncpg.connect(url)
        queries = Queries(AsyncpgDriver(producer))
        # Not measured: the consumers are up and have run one job.
        total += 1
        await queries.enqueue(["noop"], [b""], [0])
        while done < 1:
            await asyncio.sleep(0.02)
        started = time.perf_counter()
        for _ in range(events):  # one enqueue of `tasks` jobs per event: what a publish does
            await queries.enqueue(["noop"] * tasks, [b""] * tasks, [0] * tasks)
        await asyncio.wait_for(finished.wait(), timeout=300)
        elapsed = time.perf_counter() - started
        for consumer in consumers:
            consumer.shutdown.set()
        await asyncio.wait(running, timeout=30)
        await producer.close()
        for c in connections:
            await c.close()
    return (total - 1) / elapsed


async def fanout(admin_dsn: str, events: int, tasks: int, rounds: int, concurrency: int) -> tuple[float, float]:
    """Fan-out rounds alternating with pgqueuer's; prints them and returns the two medians."""
    ours, peer = [], []
    print(
        f"\nfan-out: {events} events x {tasks} matching tasks = {events * tasks} pao.noop runs, first publish -> last"
    )
    print(f"success; pao: 1 worker x {concurrency}; pgqueuer: 5 consumers x batch 10, {events} enqueues of {tasks}")
    print(f"{'round':>5}  {'pao runs/s':>11}  {'pgqueuer jobs/s':>15}")
    for round_no in range(1, rounds + 1):
        ours.append(await pao_fanout(admin_dsn, events, tasks, concurrency))
        peer.append(await pgqueuer_fanout(admin_dsn, events, tasks, 5, 10))
        print(f"{round_no:>5}  {ours[-1]:>11.0f}  {peer[-1]:>15.0f}")
    mine, theirs = statistics.median(ours), statistics.median(peer)
    print(f"{'median':>5}  {mine:>11.0f}  {theirs:>15.0f}\nratio pao / pgqueuer: {mine / theirs:.2f}")
    return mine, theirs


# --------------------------------------------------------------------------- matching cost


async def matching(admin_dsn: str, count: int) -> None:
    results: dict[int, list[float]] = {}
    async with fresh_database(admin_dsn, "match") as url, open_engine(settings(url), run_worker=False) as engine:
        await event_task(engine, "m.hit")
        async with engine.db.acquire() as conn:
            for size in (10, 10_000):
                have = await conn.fetchval("SELECT count(*) FROM tasks")
                await conn.execute(
                    """INSERT INTO tasks (title, schedule_kind, schedule_expr, payload, created_by)
                       SELECT 'other', 'event', 'other.' || i || '.*', $1::jsonb, $2
                       FROM generate_series($3::int, $4::int) i""",
                    NOOP,
                    engine.owner.id,
                    have,
                    size - 1,
                )
                await conn.execute("ANALYZE tasks")
                times = []
                for i in range(count):
                    t0 = time.perf_counter()
                    await engine.publish_event(engine.owner, topic="m.hit", data={"i": i}, dedupe_key=None, source=None)
                    times.append((time.perf_counter() - t0) * 1000)
                results[size] = times
    print(
        f"\nmatching: publish_event (1 matching task, one run each) with event tasks on other topics; {count} publishes"
    )
    print(f"{'event tasks':>11}{'p50 ms':>8}{'p99 ms':>8}")
    for size, times in results.items():
        print(f"{size:>11,}{pct(times, 50):>8.2f}{pct(times, 99):>8.2f}")
    print(f"10,000 / 10 (p50): {pct(results[10_000], 50) / pct(results[10], 50):.2f}")


# --------------------------------------------------------------------------- Redis bridge


async def bridge(admin_dsn: str, redis_url: str, count: int, down: int) -> None:
    import redis.asyncio as aioredis

    out = f"pao:bench:{RUN}:out"
    bare = f"pao:bench:{RUN}:bare"
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    async with fresh_database(admin_dsn, "bridge") as url, open_engine(settings(url), run_worker=False) as engine:
        relay = Relay(engine.db, redis_url=redis_url, stream=out, dsn=url)
        await relay.register()
        async with engine.db.acquire() as conn:
            await conn.execute(
                """INSERT INTO events (topic, data, source, matched_at)
                   SELECT 'b.e', jsonb_build_object('i', i, 'text', 'some payload of a few words'), 'bench', now()
                   FROM generate_series(1, $1) i""",
                count,
            )
        async with streams.connect(redis_url) as rc:
            t0 = time.perf_counter()
            while await relay.relay_once(rc):
                pass
            relayed = count / (time.perf_counter() - t0)
            payload = "some payload of a few words"
            entries = [
                {
                    "event_id": str(i),
                    "topic": "b.e",
                    "data": f'{{"i":{i},"text":"{payload}"}}',
                    "source": "bench",
                    "depth": "0",
                    "created_at": datetime.now(UTC).isoformat(),
                }
                for i in range(count)
            ]
            t0 = time.perf_counter()
            for start in range(0, count, 500):
                await streams.append(rc, bare, entries[start : start + 500])
            xadd = count / (time.perf_counter() - t0)
        assert await client.xlen(out) == count
        # Redis down: a relay pointed at a port where nothing listens, while events are published.
        dead = Relay(engine.db, redis_url="redis://127.0.0.1:1/0", stream=out, dsn=url, poll=0.1)
        dead_task = asyncio.create_task(dead.run())
        for i in range(down):
            await engine.publish_event(engine.owner, topic="b.down", data={"i": i}, dedupe_key=None, source=None)
        backlog = (await engine.health())["relay"]
        await dead.stop()
        await dead_task
        async with streams.connect(redis_url) as rc:
            t0 = time.perf_counter()
            while await relay.relay_once(rc):
                pass
            drained = time.perf_counter() - t0
        delivered = len([1 for _, f in await client.xrange(out, count=count + down + 10) if f["topic"] == "b.down"])
    await client.delete(out, bare)
    await client.aclose()
    print(f"\nRedis bridge: {count:,} events")
    print(f"{'path':<44}{'events/s':>10}")
    print(f"{'relay: outbox -> XADD -> delete, committed':<44}{relayed:>10,.0f}")
    print(f"{'peer: bare pipelined XADD, 500 per trip':<44}{xadd:>10,.0f}")
    print(f"ratio relay / bare XADD: {relayed / xadd:.2f}")
    print(
        f"Redis down while {down:,} events were published: outbox held {backlog['waiting']:,} "
        f"(oldest {backlog['oldest_seconds']:.1f} s); after it came back {delivered:,} delivered in {drained:.2f} s"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="latency,fanout,matching,bridge")
    parser.add_argument("--latency-count", type=int, default=300)
    parser.add_argument("--events", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--matching-count", type=int, default=300)
    parser.add_argument("--bridge-count", type=int, default=20_000)
    parser.add_argument("--down-count", type=int, default=5_000)
    args = parser.parse_args()
    # The relay's retries while Redis is down are expected here; the figures are what matters.
    logging.getLogger("pao_orchestrator").setLevel(logging.ERROR)
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        await _figures(admin_dsn, args)


async def _figures(admin_dsn: str, args: argparse.Namespace) -> None:
    only = set(args.only.split(","))
    if "latency" in only:
        await latency(admin_dsn, args.latency_count)
    if "fanout" in only:
        await fanout(admin_dsn, args.events, args.tasks, args.rounds, args.concurrency)
    if "matching" in only:
        await matching(admin_dsn, args.matching_count)
    if "bridge" in only:
        await bridge(
            admin_dsn, os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"), args.bridge_count, args.down_count
        )


if __name__ == "__main__":
    # As `pao serve` does before its loop starts (pao_orchestrator.process); the in-process peer
    # (pgqueuer's consumers) runs in this same process and gains alike.
    settle_heap()
    asyncio.run(main())
