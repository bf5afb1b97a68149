"""What authentication costs per tool call over streamable HTTP: the same server with and without
bearer tokens, measured in one invocation.

Two `pao serve --transport http` processes on one database, one with auth (every request's token
is looked up and its hash compared, the scope checked, the caller resolved) and one with
`--no-auth` (loopback, every caller the owner). One MCP session each; `list_tasks` (limit 1) is
called on both alternately, call by call, so machine noise hits both alike.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/auth.py --calls 2000

Without DATABASE_URL an embedded Postgres is started for it (the store's shared scratch helpers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from pao_orchestrator.store import postgres_server, scratch_database

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pao(args: list[str], env: dict[str, str], **kwargs: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "pao_orchestrator.server.cli", *args], env=env, **kwargs)  # type: ignore[call-overload, no-any-return]


def wait_healthy(base: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(base)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        async with scratch_database(admin_dsn, prefix="pao_bench_auth") as url:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "mcp.json").write_text('{"mcpServers": {}}')
                    env = {
                        **os.environ,
                        "DATABASE_URL": url,
                        "PAO_DATA_DIR": tmp,
                        "PAO_MCP_CONFIG": str(Path(tmp) / "mcp.json"),
                        "PAO_LOG_LEVEL": "WARNING",
                        "PYTHONPATH": str(ROOT),
                    }
                    made = pao(
                        ["agents", "create", "--name", "bench", "--scopes", "tasks:read"], env, stdout=subprocess.PIPE
                    )
                    out, _ = made.communicate(timeout=120)
                    token = out.decode().splitlines()[-1].rsplit(" ", 1)[-1]
                    ports = {"with token": free_port(), "without auth": free_port()}
                    for label, port in ports.items():
                        extra = [] if label == "with token" else ["--no-auth"]
                        procs.append(pao(["serve", "--transport", "http", "--port", str(port), *extra], env))
                    for port in ports.values():
                        wait_healthy(f"http://127.0.0.1:{port}")
                    times: dict[str, list[float]] = {label: [] for label in ports}
                    async with (
                        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as authed,
                        httpx2.AsyncClient(timeout=60) as plain,
                        Client(
                            streamable_http_client(f"http://127.0.0.1:{ports['with token']}/mcp", http_client=authed)
                        ) as a,
                        Client(
                            streamable_http_client(f"http://127.0.0.1:{ports['without auth']}/mcp", http_client=plain)
                        ) as b,
                    ):
                        clients = {"with token": a, "without auth": b}
                        for _ in range(50):  # warm both
                            for client in clients.values():
                                await client.call_tool("list_tasks", {"limit": 1})
                        for i in range(args.calls):
                            order = list(clients.items()) if i % 2 == 0 else list(reversed(clients.items()))
                            for label, client in order:
                                t0 = time.perf_counter()
                                result = await client.call_tool("list_tasks", {"limit": 1})
                                times[label].append((time.perf_counter() - t0) * 1000)
                                assert not result.is_error, result
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=30)
    print(f"{args.calls} calls of list_tasks (limit 1) per side over streamable HTTP, interleaved")
    print(f"{'path':14} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
    for label, values in times.items():
        print(
            f"{label:14} {statistics.median(values):8.3f} {percentile(values, 0.9):8.3f} "
            f"{percentile(values, 0.99):8.3f} {statistics.fmean(values):8.3f}"
        )
    with_token, without = statistics.median(times["with token"]), statistics.median(times["without auth"])
    print(
        f"auth overhead p50: {with_token - without:+.3f} ms per call; ratio with / without: {with_token / without:.2f}"
    )


if __name__ == "__main__":
    asyncio.run(main())
