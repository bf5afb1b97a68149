"""Slowloris against `pao serve --transport http`: connections that never finish their request head.

Two servers on one database, measured in one invocation: pao with its header timeout (set here
to `--timeout`, default 2 s; PAO_HEADER_TIMEOUT_SECONDS, 10 s by default) and the same pao with
the timeout at its maximum (300 s), which behaves as uvicorn alone does (no header timeout). Each
gets `--connections` sockets that send a request line and one header, then a header byte every
second, never the blank line; the table shows how many are still open as time passes, and
whether a normal `GET /health` is answered meanwhile.

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/postgres .venv/bin/python bench/slowloris.py

Without DATABASE_URL an embedded Postgres is started for it (the store's shared scratch helpers).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from pao_orchestrator.store import postgres_server, scratch_database

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as answer:
            return answer.status == 200
    except OSError:
        return False


async def drip(port: int, opened: list[int], closed: list[float], started: float, seconds: float) -> None:
    """One slowloris connection: a header byte a second; note when the server closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened.append(1)
    writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    try:
        while time.monotonic() - started < seconds:
            await writer.drain()
            try:
                data = await asyncio.wait_for(reader.read(1), timeout=1)
            except TimeoutError:
                writer.write(b"X")  # one more byte of a header that never ends
                continue
            if data == b"":
                closed.append(time.monotonic() - started)
                return
    except OSError:
        closed.append(time.monotonic() - started)
    finally:
        writer.close()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=2.0)
    parser.add_argument("--seconds", type=float, default=15.0)
    args = parser.parse_args()
    procs: list[subprocess.Popen[bytes]] = []
    results: dict[str, tuple[list[float], list[tuple[float, int, bool]]]] = {}
    with postgres_server(os.environ.get("DATABASE_URL"), prefix="pao-bench-pg-") as admin_dsn:
        async with scratch_database(admin_dsn, prefix="pao_bench_slow") as url:
            try:
                with tempfile.TemporaryDirectory() as tmp:
                    (Path(tmp) / "mcp.json").write_text('{"mcpServers": {}}')
                    env = {
                        **os.environ,
                        "DATABASE_URL": url,
                        "PAO_DATA_DIR": tmp,
                        "PAO_MCP_CONFIG": str(Path(tmp) / "mcp.json"),
                        "PAO_LOG_LEVEL": "ERROR",
                        "PYTHONPATH": str(ROOT),
                    }
                    migrate = [sys.executable, "-m", "pao_orchestrator.server.cli", "migrate"]
                    subprocess.run(migrate, env=env, check=True, capture_output=True, timeout=120)
                    sides = {f"pao, header timeout {args.timeout:g}s": args.timeout, "no header timeout (300s)": 300.0}
                    ports = {}
                    for label, timeout in sides.items():
                        port = ports[label] = free_port()
                        cmd = [sys.executable, "-m", "pao_orchestrator.server.cli", "serve", "--transport", "http"]
                        procs.append(
                            subprocess.Popen(
                                [*cmd, "--port", str(port)],
                                env={**env, "PAO_HEADER_TIMEOUT_SECONDS": str(timeout)},
                            )
                        )
                    for port in ports.values():
                        deadline = time.monotonic() + 60
                        while not await asyncio.to_thread(healthy, port) and time.monotonic() < deadline:
                            await asyncio.sleep(0.1)
                    for label, port in ports.items():
                        opened: list[int] = []
                        closed: list[float] = []
                        started = time.monotonic()
                        drips = [
                            asyncio.create_task(drip(port, opened, closed, started, args.seconds))
                            for _ in range(args.connections)
                        ]
                        samples: list[tuple[float, int, bool]] = []
                        for at in (1.0, args.timeout + 1.5, args.seconds - 1):
                            await asyncio.sleep(max(0.0, at - (time.monotonic() - started)))
                            ok = await asyncio.to_thread(healthy, port)
                            samples.append((at, len(opened) - len(closed), ok))
                        await asyncio.gather(*drips)
                        results[label] = (closed, samples)
            finally:
                for proc in procs:
                    proc.terminate()
                    proc.wait(timeout=30)
    print(f"{args.connections} slowloris connections (a header byte a second, never the blank line)")
    header = "  ".join(f"open at {at:>4.1f}s" for at, _, _ in next(iter(results.values()))[1])
    print(f"{'server':30} {header}  closed by server  /health answered")
    for label, (closed, samples) in results.items():
        cells = "  ".join(f"{n:>14}" for _, n, _ in samples)
        answered = "yes" if all(ok for _, _, ok in samples) else "no"
        print(f"{label:30} {cells}  {len(closed):>16}  {answered}")


if __name__ == "__main__":
    asyncio.run(main())
