"""Tool-call latency over streamable HTTP: `pao serve --transport http` next to a bare MCP SDK server.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python -m bench.http_latency [--calls 500]

Both servers run in their own process on this machine and are called by the SDK's `Client` over
streamable HTTP, interleaved call by call. pao answers `get_task` (a typical read: one query, a
pydantic model with an output schema); the peer is the SDK's own `MCPServer` with a one-line
`echo` tool, the floor of the transport. The difference is what pao adds per call.
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

PEER = """
import sys, uvicorn
from mcp.server.mcpserver import MCPServer
mcp = MCPServer("peer")

@mcp.tool()
def echo(text: str) -> dict[str, str]:
    return {"text": text}

uvicorn.run(mcp.streamable_http_app(host="127.0.0.1"), host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_up(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers (the MCP endpoint refuses a bare GET)
        except OSError:
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(url)


async def measure(admin_dsn: str, calls: int) -> dict[str, list[float]]:
    """Milliseconds per call: pao's get_task and the bare SDK server's echo, interleaved."""
    async with scratch_database(admin_dsn, prefix="pao_bench_http", migrated=True) as url:
        data = Path(tempfile.mkdtemp(prefix="pao-bench-"))
        (data / "none.json").write_text('{"mcpServers": {}}')
        pao_port, peer_port = free_port(), free_port()
        env = {
            **os.environ,
            "DATABASE_URL": url,
            "PAO_DATA_DIR": str(data),
            "PAO_MCP_CONFIG": str(data / "none.json"),
            "PAO_LOG_LEVEL": "WARNING",
        }
        cli = [sys.executable, "-m", "pao_orchestrator.server.cli"]
        # pao over HTTP takes a bearer token, as users run it (the peer has no auth; bench/auth.py measures
        # what the token costs on its own).
        made = subprocess.run(
            [*cli, "agents", "create", "--name", "bench", "--scopes", "tasks:read,tasks:write"],
            env=env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        )
        token = made.stdout.strip().splitlines()[-1].rsplit(" ", 1)[-1]
        command = [*cli, "serve", "--transport", "http"]
        pao = subprocess.Popen([*command, "--port", str(pao_port)], env=env, cwd=ROOT)
        # The peer narrates every session at INFO on stderr: not part of the table.
        peer = subprocess.Popen([sys.executable, "-c", PEER, str(peer_port)], cwd=ROOT, stderr=subprocess.DEVNULL)
        try:
            await asyncio.to_thread(wait_up, f"http://127.0.0.1:{pao_port}/health", pao)
            await asyncio.to_thread(wait_up, f"http://127.0.0.1:{peer_port}/mcp", peer)
            return await _interleave(
                f"http://127.0.0.1:{pao_port}/mcp", f"http://127.0.0.1:{peer_port}/mcp", calls, token
            )
        finally:
            for proc in (pao, peer):
                proc.terminate()
            for proc in (pao, peer):
                proc.wait(timeout=30)


async def _interleave(pao_url: str, peer_url: str, calls: int, token: str) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {"pao": [], "peer": []}
    async with (
        httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(pao_url, http_client=http)) as pao,
        Client(peer_url) as peer,
    ):
        created = await pao.call_tool(
            "create_task",
            {
                "title": "bench",
                "schedule_kind": "cron",
                "schedule_expr": "0 9 * * *",
                "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {}}]},
            },
        )
        assert created.structured_content is not None, created.content
        task_id = created.structured_content["task"]["id"]

        async def call_pao() -> None:
            result = await pao.call_tool("get_task", {"task_id": task_id})
            assert not result.is_error, result.content

        async def call_peer() -> None:
            result = await peer.call_tool("echo", {"text": "hello"})
            assert not result.is_error, result.content

        for _ in range(20):  # warm up
            await call_pao()
            await call_peer()
        for _ in range(calls):
            for label, fn in (("pao", call_pao), ("peer", call_peer)):
                started = time.perf_counter()
                await fn()
                timings[label].append((time.perf_counter() - started) * 1000)
    return timings


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=500)
    args = parser.parse_args()
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        timings = await measure(admin_dsn, args.calls)
    base = statistics.median(timings["peer"])
    print(f"{args.calls} tool calls over streamable HTTP each, interleaved")
    print(f"{'server':<22} {'p50 ms':>8} {'p99 ms':>8} {'p50 / peer':>11}")
    for label, name in (("pao", "pao get_task"), ("peer", "bare SDK server echo")):
        values = timings[label]
        p50 = statistics.median(values)
        print(f"{name:<22} {p50:>8.2f} {pct(values, 0.99):>8.2f} {p50 / base:>11.2f}")


if __name__ == "__main__":
    asyncio.run(main())
