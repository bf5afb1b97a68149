"""The MCP face's figures, each next to its peer, in one invocation:

* tools/list bytes (model-facing part: name, title, description, inputSchema as compact JSON; and whole),
  for this tree and, with --before, for another checkout (run with its own .venv);
* change -> notification: a run's state change to a subscriber's `notifications/resources/updated` on a
  subscriptions/listen stream, next to a raw asyncpg LISTEN on the same channel (the peer: what the
  database alone costs);
* tool-call latency over streamable HTTP for create_task and get_run, 1 and 16 concurrent clients.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.mcp_face [--before PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import asyncpg
from mcp import Client

from pao_orchestrator.contracts import CHANGES_CHANNEL
from tests.conftest import with_database
from tests.engine.support import task_args

HERE = Path(__file__).resolve().parent.parent
MEASURE_TOOLS = """
import asyncio, json, sys, tempfile
from pathlib import Path
from mcp import Client
from pao_orchestrator.engine import Settings, open_engine
from pao_orchestrator.server.app import create_server
async def main():
    tmp = Path(tempfile.mkdtemp()); cfg = tmp / "mcp.json"; cfg.write_text('{"mcpServers": {}}')
    s = Settings(database_url=sys.argv[1], mcp_config=cfg, data_dir=tmp / "d")
    async with open_engine(s, run_worker=False) as e, Client(create_server(e)) as c:
        tools = (await c.list_tools()).tools
    facing = sum(len(json.dumps({"name": t.name, "title": t.title, "description": t.description,
                 "inputSchema": t.input_schema}, separators=(",", ":"))) for t in tools)
    whole = len(json.dumps({"tools": [t.model_dump(mode="json", by_alias=True, exclude_none=True) for t in tools]},
                separators=(",", ":")))
    print(json.dumps([len(tools), facing, whole]))
asyncio.run(main())
"""


@contextmanager
def serving(python: str, tree: Path, env: dict[str, str], port: int) -> Iterator[None]:
    """`pao serve --transport http` of the tree at `tree`, until the block ends."""
    command = [python, "-m", "pao_orchestrator.server.cli", "serve", "--transport", "http", "--port", str(port)]
    usage = subprocess.run([*command[:4], "--help"], env=env, cwd=str(tree), capture_output=True, text=True).stdout
    if "--no-auth" in usage:
        # Trees with bearer auth serve loopback without it here, like trees before auth existed: this compares
        # the face (bench/auth.py measures the token's cost).
        command.append("--no-auth")
    server = subprocess.Popen(command, env=env, cwd=str(tree), stdout=subprocess.DEVNULL)
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                    break
            except OSError:
                time.sleep(0.1)
        yield
    finally:
        server.terminate()
        server.wait(timeout=30)


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def tools_list(python: str, cwd: str, url: str) -> list[int]:
    out = subprocess.run(
        [python, "-c", MEASURE_TOOLS, url], cwd=cwd, capture_output=True, text=True, check=True, timeout=120
    )
    return list(json.loads(out.stdout.strip().splitlines()[-1]))


async def new_db(admin_url: str) -> str:
    name = f"pao_bench_{uuid.uuid4().hex[:10]}"
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return name


async def drop_db(admin_url: str, name: str) -> None:
    conn = await asyncpg.connect(admin_url)
    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await conn.close()


async def notify_latency(url: str, mcp_url: str, rounds: int) -> tuple[list[float], list[float]]:
    """(via MCP listen stream, via raw LISTEN) milliseconds from the commit of a run's change."""
    raw: list[float] = []
    mcp: list[float] = []
    listener = await asyncpg.connect(url)
    heard = asyncio.Queue[float]()
    await listener.add_listener(CHANGES_CHANNEL, lambda *_: heard.put_nowait(time.perf_counter()))
    writer = await asyncpg.connect(url)
    async with Client(mcp_url) as client:
        created = await client.call_tool(
            "create_task", task_args([{"id": "a", "uses": "pao.noop", "with": {}}], title="bench")
        )
        assert created.structured_content is not None
        task_id = created.structured_content["task"]["id"]
        started = await client.call_tool("run_now", {"task_id": task_id, "wait": 10})
        assert started.structured_content is not None
        run_id = started.structured_content["run_id"]
        uri = f"pao://runs/{run_id}"
        async with client.listen(resource_subscriptions=[uri]) as sub:
            events = sub.__aiter__()
            for _ in range(rounds):
                while not heard.empty():
                    heard.get_nowait()
                t0 = time.perf_counter()
                await writer.execute("UPDATE runs SET reason = $2 WHERE id = $1", uuid.UUID(run_id), str(t0))
                await asyncio.wait_for(events.__anext__(), 10)
                mcp.append((time.perf_counter() - t0) * 1000)
                raw.append((await asyncio.wait_for(heard.get(), 10) - t0) * 1000)
    await listener.close()
    await writer.close()
    return mcp, raw


async def call_latency(mcp_url: str, clients: int, calls: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {"create_task": [], "get_run": []}

    async def one() -> None:
        async with Client(mcp_url) as client:
            args = task_args([{"id": "a", "uses": "pao.noop", "with": {}}], title="bench")
            created = await client.call_tool("create_task", args)
            assert created.structured_content is not None
            task_id = created.structured_content["task"]["id"]
            run = await client.call_tool("run_now", {"task_id": task_id, "wait": 10})
            assert run.structured_content is not None
            run_id = run.structured_content["run_id"]
            for _ in range(calls):
                t0 = time.perf_counter()
                await client.call_tool("create_task", args)
                out["create_task"].append((time.perf_counter() - t0) * 1000)
                t0 = time.perf_counter()
                await client.call_tool("get_run", {"run_id": run_id})
                out["get_run"].append((time.perf_counter() - t0) * 1000)

    await asyncio.gather(*(one() for _ in range(clients)))
    return out


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--before", help="a checkout of the code to compare with (with its own .venv)")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--calls", type=int, default=50)
    parser.add_argument("--latency-rounds", type=int, default=3)
    args = parser.parse_args()
    admin = os.environ["DATABASE_URL"]
    name = await new_db(admin)
    dropped = [name]
    url = with_database(admin, name)
    port = 18000 + os.getpid() % 1000
    tmp = Path(tempfile.mkdtemp())
    (tmp / "mcp.json").write_text('{"mcpServers": {}}')
    env = {**os.environ, "DATABASE_URL": url, "PAO_MCP_CONFIG": str(tmp / "mcp.json"), "PAO_LOG_LEVEL": "WARNING",
           "PAO_DATA_DIR": str(tmp / "data")}  # fmt: skip
    try:
        print("tools/list bytes (model-facing / whole)")
        rows = [("this", tools_list(sys.executable, str(HERE), url))]
        if args.before:
            before_name = await new_db(admin)
            try:
                python = str(Path(args.before) / ".venv" / "bin" / "python")
                rows.insert(0, ("before", tools_list(python, args.before, with_database(admin, before_name))))
            finally:
                await drop_db(admin, before_name)
        for label, (count, facing, whole) in rows:
            print(f"  {label:7} {count:3} tools  {facing:7,}  {whole:7,}")
        mcp_url = f"http://127.0.0.1:{port}/mcp"
        with serving(sys.executable, HERE, env, port):
            mcp, raw = await notify_latency(url, mcp_url, args.rounds)
            print(f"change -> notification, {args.rounds} changes   p50 ms   p99 ms")
            print(f"  raw LISTEN (peer)                   {statistics.median(raw):6.2f}   {pct(raw, 0.99):6.2f}")
            print(f"  MCP listen stream                   {statistics.median(mcp):6.2f}   {pct(mcp, 0.99):6.2f}")
        trees = [("this", sys.executable, HERE, env)]
        if args.before:
            before_db = await new_db(admin)
            dropped.append(before_db)
            before_env = {**env, "DATABASE_URL": with_database(admin, before_db)}
            python = str(Path(args.before) / ".venv" / "bin" / "python")
            trees.insert(0, ("before", python, Path(args.before), before_env))
        print(f"tool calls over streamable HTTP, median of {args.latency_rounds} alternating rounds   p50 ms   p99 ms")
        for clients in (1, 16):
            results: dict[tuple[str, str], list[tuple[float, float]]] = {}
            for round_ in range(args.latency_rounds):
                order = trees if round_ % 2 == 0 else list(reversed(trees))
                for label, python, tree, tree_env in order:
                    with serving(python, tree, tree_env, port):
                        lat = await call_latency(mcp_url, clients, args.calls)
                    for tool, values in lat.items():
                        results.setdefault((label, tool), []).append((statistics.median(values), pct(values, 0.99)))
            for (label, tool), measured in sorted(results.items(), key=lambda kv: (kv[0][1], kv[0][0] != "before")):
                p50 = statistics.median(r[0] for r in measured)
                p99 = statistics.median(r[1] for r in measured)
                print(f"  {label:6} {tool:12} {clients:2} client(s)                          {p50:6.2f}   {p99:6.2f}")
    finally:
        for db_name in dropped:
            await drop_db(admin, db_name)


if __name__ == "__main__":
    asyncio.run(main())
