"""Authentication, scopes and safe binding through the real transports (a `pao serve` subprocess)."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import asyncpg
import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.server.serving import (
    auth_headers,
    create_agent,
    free_port,
    get,
    http_client,
    pao,
    pao_env,
    post,
    sse,
    wait_healthy,
)

INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
).encode()


def call(name: str, arguments: dict[str, Any], request_id: int = 2) -> bytes:
    return json.dumps(
        {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}
    ).encode()


class Served:
    def __init__(self, base: str, admin: str, reader: str, proc: subprocess.Popen[bytes]) -> None:
        self.base, self.admin, self.reader, self.proc = base, admin, reader, proc


@pytest.fixture
def served(database_url: str, tmp_path: Path, mcp_config: Path, request: pytest.FixtureRequest) -> Iterator[Served]:
    transport = getattr(request, "param", "http")
    admin = create_agent(database_url, tmp_path, mcp_config, "root", "admin")
    reader = create_agent(database_url, tmp_path, mcp_config, "reader", "tasks:read,runs:read")
    port = free_port()
    args = ["serve", "--transport", transport, "--port", str(port), "--allowed-origin", "https://ok.example"]
    proc = pao(args, database_url, tmp_path, mcp_config, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield Served(base, admin, reader, proc)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        proc.stderr.close()


def test_http_needs_a_valid_token_and_says_where_the_metadata_is(served: Served) -> None:
    for headers in ({}, auth_headers("pao_" + "0" * 32 + "guess"), auth_headers("not-a-token")):
        answer = post(served.base, INIT, headers)
        assert answer.status_code == 401, answer.text
        challenge = answer.headers["www-authenticate"]
        assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge
        assert "/.well-known/oauth-protected-resource/mcp" in challenge
    metadata = httpx2.get(f"{served.base}/.well-known/oauth-protected-resource/mcp", timeout=10).json()
    assert metadata["resource"] == f"{served.base}/mcp"
    assert post(served.base, INIT, auth_headers(served.reader)).status_code == 200


def test_a_tool_outside_the_agents_scopes_is_403_naming_the_scope(served: Served) -> None:
    answer = post(served.base, call("create_task", {}), auth_headers(served.reader))
    assert answer.status_code == 403
    assert 'error="insufficient_scope", scope="tasks:write"' in answer.headers["www-authenticate"]
    assert "tasks:write" in answer.json()["error_description"]


async def test_scopes_over_a_real_session_and_the_audit_records_refusals(served: Served) -> None:
    with anyio.fail_after(60):
        async with http_client(served.base, served.reader) as client:
            listed = await client.call_tool("list_tasks", {})
            assert listed.structured_content == {"tasks": [], "next_cursor": None}
            with pytest.raises(MCPError, match="error response"):  # the HTTP 403 of the scope challenge
                await client.call_tool("create_agent", {"name": "x", "scopes": ["admin"]})
            again = await client.call_tool("list_runs", {})  # the session goes on
            assert again.structured_content == {"runs": [], "next_cursor": None}
        async with http_client(served.base, served.admin) as client:
            audit = await client.call_tool("list_audit", {})
    entries = audit.structured_content["entries"]  # type: ignore[index]
    denied = [e for e in entries if e["outcome"] == "denied"]
    assert any(e["agent_name"] == "reader" and e["action"] == "create_agent" for e in denied), denied
    assert served.reader not in json.dumps(entries) and served.admin not in json.dumps(entries)


async def test_a_client_hammering_with_a_bad_token_does_not_fill_the_audit_log(
    served: Served, database_url: str
) -> None:
    bad = {"authorization": "Bearer pao_not-a-token", "content-type": "application/json"}
    answers = await asyncio.gather(
        *(asyncio.to_thread(post, served.base, INIT, bad) for _ in range(300)), return_exceptions=False
    )
    assert {a.status_code for a in answers} == {401}
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch(
            "SELECT details FROM audit_log WHERE action = 'authenticate' AND outcome = 'denied' ORDER BY id"
        )
    finally:
        await conn.close()
    # One entry when it starts, then at most one per 10 s carrying how many were left out.
    assert 1 <= len(rows) <= 3, rows
    assert all(json.loads(r["details"])["reason"] == "unknown, revoked or expired token" for r in rows)
    assert post(served.base, INIT, auth_headers(served.reader)).status_code == 200  # others are not slowed


def test_denied_throttle_counts_what_it_leaves_out() -> None:
    from pao_orchestrator.engine.audit import DeniedThrottle

    now = [0.0]
    throttle = DeniedThrottle(10.0, max_keys=3, clock=lambda: now[0])
    key = (None, "authenticate", "endpoint", "no bearer token")
    assert throttle.admit(key) == 0
    assert [throttle.admit(key) for _ in range(5)] == [None] * 5
    assert throttle.admit(("agent", "create_task", "tool", "missing scope")) == 0  # another refusal: its own entry
    now[0] = 10.5
    assert throttle.admit(key) == 5  # written, saying five were left out
    assert throttle.admit(key) is None
    for i in range(5):  # bounded: new kinds of refusal past max_keys start afresh
        throttle.admit(("x", str(i), "", ""))
    assert throttle.admit(key) == 0


def test_a_revoked_token_stops_working_at_once(
    served: Served, database_url: str, tmp_path: Path, mcp_config: Path
) -> None:
    assert post(served.base, INIT, auth_headers(served.reader)).status_code == 200
    listing = subprocess.run(
        [*pao_cmd(), "agents", "list"],
        env=pao_env(database_url, tmp_path, mcp_config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    reader_id = next(line.split()[0] for line in listing.stdout.splitlines() if " reader " in line)
    done = subprocess.run(
        [*pao_cmd(), "agents", "revoke", reader_id],
        env=pao_env(database_url, tmp_path, mcp_config),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and "revoked" in done.stdout, done.stderr
    assert post(served.base, INIT, auth_headers(served.reader)).status_code == 401
    assert post(served.base, INIT, auth_headers(served.admin)).status_code == 200


def pao_cmd() -> list[str]:
    return [sys.executable, "-m", "pao_orchestrator.server.cli"]


@pytest.mark.parametrize("served", ["sse"], indirect=True)
async def test_sse_needs_a_token_too(served: Served) -> None:
    assert httpx2.get(f"{served.base}/sse", timeout=10).status_code == 401
    with anyio.fail_after(60):
        async with sse(served.base, served.reader) as client:
            result = await client.call_tool("list_runs", {})
    assert result.structured_content == {"runs": [], "next_cursor": None}


def test_foreign_host_and_origin_are_refused_and_allowed_ones_pass(served: Served) -> None:
    headers = auth_headers(served.admin)
    assert post(served.base, INIT, {**headers, "Host": "evil.example"}).status_code == 421
    assert post(served.base, INIT, {**headers, "Origin": "https://evil.example"}).status_code == 403
    assert post(served.base, INIT, {**headers, "Origin": "https://ok.example"}).status_code == 200
    answer = post(served.base, INIT, {**headers, "Origin": "https://ok.example"})
    assert "access-control-allow-origin" not in answer.headers  # no CORS


def test_health_is_open_and_ready_reveals_nothing_to_strangers(served: Served) -> None:
    assert get(f"{served.base}/health")[1] == {"status": "ok"}
    assert get(f"{served.base}/health/ready", {"Host": "evil.example"})[1] == {"status": "ok"}
    _, details = get(f"{served.base}/health/ready", auth_headers(served.reader))
    assert details["database"] == "ok" and "worker" in details


def test_a_body_over_the_limit_is_413_and_the_server_stays_up(served: Served) -> None:
    big = b'{"jsonrpc":"2.0","id":1,"method":"ping","params":{"x":"' + b"a" * (50 * 1024 * 1024) + b'"}}'
    answer = post(served.base, big, auth_headers(served.admin))
    assert answer.status_code == 413

    # Without a Content-Length (chunked), the limit holds as the body streams in.
    def chunks() -> Iterator[bytes]:
        for _ in range(50):
            yield b"a" * (1024 * 1024)

    streamed = httpx2.post(
        f"{served.base}/mcp",
        content=chunks(),
        headers={**auth_headers(served.admin), "Content-Type": "application/json", "Accept": "application/json"},
        timeout=30,
    )
    assert streamed.status_code == 413
    assert post(served.base, INIT, auth_headers(served.admin)).status_code == 200


def test_a_connection_that_never_finishes_its_headers_is_closed(
    database_url: str, tmp_path: Path, mcp_config: Path
) -> None:
    port = free_port()
    env = pao_env(database_url, tmp_path, mcp_config, PAO_HEADER_TIMEOUT_SECONDS="1")
    proc = pao(["serve", "--transport", "http", "--port", str(port)], database_url, tmp_path, mcp_config, env=env)
    try:
        wait_healthy(proc, f"http://127.0.0.1:{port}")
        slow = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(20)]
        for s in slow:
            s.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # never the blank line
        started = time.monotonic()
        closed = 0
        for s in slow:
            s.settimeout(10)
            try:
                closed += s.recv(1) == b""
            except OSError:
                closed += 1
            s.close()
        took = time.monotonic() - started
        assert closed == 20 and took < 8, (closed, took)
        assert get(f"http://127.0.0.1:{port}/health")[1] == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


def test_a_public_bind_without_auth_is_refused_unless_insecure(
    database_url: str, tmp_path: Path, mcp_config: Path
) -> None:
    args = ["serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(free_port()), "--no-auth"]
    proc = pao(args, database_url, tmp_path, mcp_config, stderr=subprocess.PIPE)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 1
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pao: refusing to serve on 0.0.0.0 without authentication")


def test_a_wildcard_bind_keeps_host_checks_on(database_url: str, tmp_path: Path, mcp_config: Path) -> None:
    admin = create_agent(database_url, tmp_path, mcp_config, "root", "admin")
    port = free_port()
    proc = pao(
        ["serve", "--transport", "http", "--host", "0.0.0.0", "--port", str(port)], database_url, tmp_path, mcp_config
    )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        assert post(base, INIT, {**auth_headers(admin), "Host": "evil.example"}).status_code == 421
        assert post(base, INIT, {**auth_headers(admin), "Origin": "https://evil.example"}).status_code == 403
        assert post(base, INIT, auth_headers(admin)).status_code == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None
        proc.stdout.close()


async def test_stdio_acts_as_the_agent_pao_token_names(database_url: str, tmp_path: Path, mcp_config: Path) -> None:
    from mcp import Client, StdioServerParameters

    reader = create_agent(database_url, tmp_path, mcp_config, "stdio-reader", "tasks:read")
    env = pao_env(database_url, tmp_path, mcp_config, PAO_TOKEN=reader)
    params = StdioServerParameters(command=pao_cmd()[0], args=[*pao_cmd()[1:], "serve"], env=env, cwd=str(tmp_path))
    with anyio.fail_after(60):
        async with Client(params) as client:
            allowed = await client.call_tool("list_tasks", {})
            refused = await client.call_tool("run_now", {"task_id": "00000000-0000-0000-0000-000000000000"})
            conn = await asyncpg.connect(database_url)
            try:
                await conn.execute("UPDATE agent_tokens SET revoked_at = now()")
            finally:
                await conn.close()
            revoked = await client.call_tool("list_tasks", {})  # the same session, its token now revoked
    assert not allowed.is_error
    assert refused.is_error and "needs the scope 'runs:write'" in refused.content[0].text  # type: ignore[union-attr]
    assert revoked.is_error and "PAO_TOKEN was revoked" in revoked.content[0].text  # type: ignore[union-attr]
    bad = await asyncio.to_thread(
        subprocess.run,
        [*pao_cmd(), "serve"],
        env=pao_env(database_url, tmp_path, mcp_config, PAO_TOKEN="pao_nope"),
        input="",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and bad.stderr.strip().startswith("pao: PAO_TOKEN is not a usable token")


@pytest.mark.parametrize(
    ("name", "scopes", "expected"),
    [
        ("bad name", "admin", "pao: name: 'bad name': 1-64 letters"),
        ("ok", "tasks:read,root", "pao: scopes: unknown scope(s) 'root'; scopes are: admin, events:publish"),
    ],
)
def test_agents_create_refuses_bad_names_and_scopes_in_one_line(
    database_url: str, tmp_path: Path, mcp_config: Path, name: str, scopes: str, expected: str
) -> None:
    proc = pao(["agents", "create", "--name", name, "--scopes", scopes], database_url, tmp_path, mcp_config,
               stderr=subprocess.PIPE)  # fmt: skip
    out, err = proc.communicate(timeout=60)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 1 and out == b""
    assert len(lines) == 1 and lines[0].startswith(expected), lines
