"""`pao migrate`, and `pao serve` over streamable HTTP and SSE with its health routes."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest

from pao_orchestrator.store.migrator import discover
from tests.conftest import with_database
from tests.server.serving import auth_headers, create_agent, free_port, get, http_client, pao, sse, wait_healthy


async def test_migrate_applies_once_then_reports_up_to_date(pg_dsn: str, tmp_path: Path, mcp_config: Path) -> None:
    import asyncpg

    admin = await asyncpg.connect(pg_dsn)
    name = f"pao_cli_migrate_test_{uuid.uuid4().hex[:8]}"  # unique: test runs may share one Postgres
    await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    await admin.execute(f'CREATE DATABASE "{name}"')
    try:
        url = with_database(pg_dsn, name)
        first = await asyncio.to_thread(pao(["migrate"], url, tmp_path, mcp_config).communicate, None, 60)
        second = await asyncio.to_thread(pao(["migrate"], url, tmp_path, mcp_config).communicate, None, 60)
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert first[0].decode().startswith(f"applied {len(discover())} migration(s)")
    assert second[0].decode().strip() == "database is up to date"


@pytest.fixture
def serving(
    database_url: str, tmp_path: Path, mcp_config: Path, request: pytest.FixtureRequest
) -> Iterator[tuple[str, str]]:
    token = create_agent(database_url, tmp_path, mcp_config, "cli-test", "tasks:read,runs:read")
    port = free_port()
    proc = pao(["serve", "--transport", request.param, "--port", str(port)], database_url, tmp_path, mcp_config)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield base, token
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


@pytest.mark.parametrize("serving", ["http"], indirect=True)
async def test_streamable_http_serves_tools_and_health_routes(serving: tuple[str, str]) -> None:
    base, token = serving
    _, anonymous = await asyncio.to_thread(get, f"{base}/health/ready")
    _, ready = await asyncio.to_thread(get, f"{base}/health/ready", auth_headers(token))
    live, _ = await asyncio.to_thread(get, f"{base}/health/live")
    assert anonymous == {"status": "ok"}  # nothing internal (worker host:pid, servers) for strangers
    assert ready["status"] == "ok" and ready["database"] == "ok"
    assert live == 200
    with anyio.fail_after(30):
        async with http_client(base, token) as client:
            result = await client.call_tool("health", {})
    assert result.structured_content is not None and result.structured_content["status"] == "ok"


@pytest.mark.parametrize("serving", ["sse"], indirect=True)
async def test_sse_serves_tools(serving: tuple[str, str]) -> None:
    base, token = serving
    with anyio.fail_after(30):
        async with sse(base, token) as client:
            tools = {t.name for t in (await client.list_tools()).tools}
            result = await client.call_tool("list_tasks", {})
    assert "create_task" in tools
    assert result.structured_content == {"tasks": [], "next_cursor": None}


@pytest.mark.parametrize("transport", ["http", "sse"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_http_and_sse_cleanly(
    database_url: str, tmp_path: Path, mcp_config: Path, transport: str, sig: signal.Signals
) -> None:
    port = free_port()
    args = ["serve", "--transport", transport, "--port", str(port)]
    proc = pao(args, database_url, tmp_path, mcp_config, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        proc.send_signal(sig)
        started = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - started
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert rc == 0, stderr
    assert took < 10, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr and "CancelledError" not in stderr, stderr


@pytest.mark.parametrize("command", ["migrate", "worker", "serve"])
@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("notaurl", "pao: DATABASE_URL: 'notaurl' is not a Postgres URL"),
        ("postgresql://postgres:s3cret@127.0.0.1:1/x", "pao: cannot connect to Postgres at postgresql://postgres:***@"),
    ],
    ids=["not-a-url", "unreachable"],
)
def test_a_bad_database_url_is_one_line_and_a_failure(
    tmp_path: Path, mcp_config: Path, command: str, url: str, expected: str
) -> None:
    proc = pao([command], url, tmp_path, mcp_config, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert "s3cret" not in err.decode() + out.decode()


def test_version_flag_prints_the_package_version() -> None:
    from pao_orchestrator import __version__

    done = subprocess.run(
        [sys.executable, "-m", "pao_orchestrator.server.cli", "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"pao {__version__}"


def test_serve_started_from_another_folder_says_which_mcp_json_it_looked_for(database_url: str, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PAO_MCP_CONFIG"}
    env.update(
        DATABASE_URL=database_url,
        PAO_DATA_DIR=str(tmp_path / "data"),
        PAO_LOG_LEVEL="INFO",
        XDG_CONFIG_HOME=str(tmp_path / "config"),
    )
    # stdin closed at once: the server starts (and logs), reads end of file and exits.
    done = subprocess.run(
        [sys.executable, "-m", "pao_orchestrator.server.cli", "serve"],
        env=env,
        cwd=elsewhere,
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "no mcp.json found" in done.stderr, done.stderr
    assert str(elsewhere / "mcp.json") in done.stderr
    assert str(tmp_path / "config" / "pao" / "mcp.json") in done.stderr
