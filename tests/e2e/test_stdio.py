"""`pao serve` over stdio, driven by the SDK's client exactly as an agent would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest
from mcp import Client, StdioServerParameters

PIPELINE = {
    "pipeline": [
        {
            "id": "now",
            "uses": "time.get_current_time",
            "with": {"timezone": "Europe/Chisinau"},
            "save_as": "chisinau",
        },
        {
            "id": "convert",
            "uses": "time.convert_time",
            "with": {
                "source_timezone": "${steps.now.timezone}",
                "time": "08:30",
                "target_timezone": "Asia/Tokyo",
            },
            "save_as": "tokyo",
        },
    ]
}


def server_params(database_url: str, mcp_config: Path, tmp_path: Path) -> StdioServerParameters:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PAO_MCP_CONFIG": str(mcp_config),
        "PAO_DATA_DIR": str(tmp_path / "data"),
        "PAO_LOG_LEVEL": "WARNING",
    }
    return StdioServerParameters(
        command=sys.executable, args=["-m", "pao_orchestrator.server.cli", "serve"], env=env, cwd=str(tmp_path)
    )


async def call(client: Client, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


async def wait_for_run(client: Client, run_id: str, *, timeout: float = 60) -> dict[str, Any]:
    with anyio.fail_after(timeout):
        while True:
            run = await call(client, "get_run", {"run_id": run_id})
            if run["status"] not in ("queued", "running"):
                return run
            await anyio.sleep(0.1)


async def test_agent_creates_runs_and_reads_a_two_step_pipeline(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    params = server_params(database_url, mcp_config, tmp_path)
    with anyio.fail_after(90):
        async with Client(params) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {
                "create_task",
                "get_task",
                "list_tasks",
                "run_now",
                "list_runs",
                "get_run",
                "list_downstream_tools",
                "health",
            } <= set(tools)
            assert tools["get_run"].annotations is not None and tools["get_run"].annotations.read_only_hint
            assert tools["create_task"].output_schema is not None

            health = await call(client, "health", {})
            assert health["status"] == "ok"

            created = await call(
                client,
                "create_task",
                {
                    "title": "Morning time check",
                    "schedule_kind": "cron",
                    "schedule_expr": "30 8 * * *",
                    "timezone": "Europe/Chisinau",
                    "payload": PIPELINE,
                },
            )
            task = created["task"]
            assert created["warnings"] == []
            assert task["next_fires"][0].endswith(("08:30:00+02:00", "08:30:00+03:00"))

            started = await call(client, "run_now", {"task_id": task["id"]})
            assert started["status"] == "queued"
            run = await wait_for_run(client, started["run_id"])

            assert run["status"] == "succeeded", run
            steps = {s["step_id"]: s for s in run["steps"]}
            assert steps["now"]["status"] == "succeeded"
            assert steps["now"]["output"]["timezone"] == "Europe/Chisinau"
            # The second step's input was rendered from the first step's output.
            assert steps["convert"]["input"]["source_timezone"] == "Europe/Chisinau"
            assert steps["convert"]["output"]["target"]["timezone"] == "Asia/Tokyo"
            assert steps["convert"]["output"]["source"]["datetime"].endswith(("08:30:00+02:00", "08:30:00+03:00"))
            assert run["outputs"]["tokyo"]["target"]["timezone"] == "Asia/Tokyo"
            assert all(s["duration_ms"] is not None for s in run["steps"])

            listed = await call(client, "list_runs", {"task_id": task["id"]})
            assert [r["id"] for r in listed["runs"]] == [started["run_id"]]


async def test_bad_arguments_are_tool_errors_that_name_the_field_and_write_nothing(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    params = server_params(database_url, mcp_config, tmp_path)
    with anyio.fail_after(90):
        async with Client(params) as client:
            bad = {
                "title": "x",
                "schedule_kind": "cron",
                "schedule_expr": "30 8 * * *",
                "payload": {"pipeline": [{"id": "a", "uses": "nosuch.tool", "with": {}}]},
            }
            result = await client.call_tool("create_task", bad)
            assert result.is_error
            text = result.content[0].text  # type: ignore[union-attr]
            assert "payload.pipeline[0].uses" in text and "nosuch" in text and "time" in text

            result = await client.call_tool("create_task", {**bad, "priority": 12})
            assert result.is_error
            assert "priority" in result.content[0].text  # type: ignore[union-attr]

            missing = {
                **bad,
                "payload": {"pipeline": [{"id": "a", "uses": "time.get_current_time", "with": {}}]},
            }
            result = await client.call_tool("create_task", missing)
            assert result.is_error
            assert "timezone" in result.content[0].text  # type: ignore[union-attr]

            listed = await call(client, "list_tasks", {})
            assert listed["tasks"] == []


async def test_server_exits_cleanly_when_stdin_closes_leaving_no_children(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    params = server_params(database_url, mcp_config, tmp_path)
    me = psutil.Process()
    before = {p.pid for p in me.children(recursive=True)}
    with anyio.fail_after(90):
        async with Client(params) as client:
            # Start the downstream server so that there is a grandchild to clean up.
            await call(client, "list_downstream_tools", {})
            spawned = [p for p in me.children(recursive=True) if p.pid not in before]
            assert len(spawned) >= 2, spawned  # pao serve and mcp-server-time
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in spawned):
        await anyio.sleep(0.1)
    alive = [p for p in spawned if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert alive == [], f"left running after the client closed stdin: {alive}"


INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_server_while_the_client_keeps_stdin_open(
    database_url: str, mcp_config: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    params = server_params(database_url, mcp_config, tmp_path)
    proc = subprocess.Popen(
        [params.command, *params.args],
        env={**(params.env or {}), "PAO_LOG_LEVEL": "INFO", "PAO_SHUTDOWN_GRACE_SECONDS": "10"},
        cwd=params.cwd,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    try:
        proc.stdin.write(json.dumps(INITIALIZE).encode() + b"\n")
        proc.stdin.flush()
        reply = proc.stdout.readline()  # the server answers once it is up (the test's timeout bounds this)
        assert json.loads(reply)["id"] == 1, reply
        # Serving, and blocked reading a stdin the client keeps open.
        proc.send_signal(sig)
        started = time.monotonic()
        rc = proc.wait(timeout=30)
        took = time.monotonic() - started
        stderr = proc.stderr.read().decode()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for stream in (proc.stdin, proc.stdout, proc.stderr):
            stream.close()
    assert rc == 0, stderr
    assert took < 10, f"took {took:.1f}s to stop"
    assert "Traceback" not in stderr, stderr


async def test_nan_and_infinity_sent_as_json_tokens_are_refused_by_path_not_stored_as_null(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    """An agent whose JSON encoder writes NaN and 1e999 (Python's json does) reaches the tool with them."""
    params = server_params(database_url, mcp_config, tmp_path)
    process = await anyio.open_process([params.command, *params.args], env=params.env, cwd=params.cwd)
    assert process.stdin is not None and process.stdout is not None
    buffered = b""

    async def send(message: str) -> None:
        assert process.stdin is not None
        await process.stdin.send(message.encode() + b"\n")

    async def answer(request_id: int) -> dict[str, Any]:
        nonlocal buffered
        assert process.stdout is not None
        while True:
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                message = json.loads(line)
                if message.get("id") == request_id:
                    return dict(message)
            buffered += await process.stdout.receive()

    try:
        with anyio.fail_after(90):
            await send(json.dumps(INITIALIZE))
            await answer(1)
            await send('{"jsonrpc": "2.0", "method": "notifications/initialized"}')
            for request_id, token, path, shown in ((2, "NaN", "with.v", "NaN"), (3, "1e999", "with.w[0]", "Infinity")):
                step = {"id": "a", "uses": "pao.noop", "with": {"v": "TOKEN"} if path == "with.v" else {"w": ["TOKEN"]}}
                arguments = {"title": "t", "schedule_kind": "cron", "schedule_expr": "30 8 * * *"}
                call_task = {"name": "create_task", "arguments": {**arguments, "payload": {"pipeline": [step]}}}
                request = {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": call_task}
                await send(json.dumps(request).replace('"TOKEN"', token))
                result = (await answer(request_id))["result"]
                assert result["isError"] is True, result
                assert f"payload.pipeline[0].{path}: is {shown}" in result["content"][0]["text"], result
            await send('{"jsonrpc": "2.0", "id": 4, "method": "tools/call", "params": {"name": "list_tasks"}}')
            listed = (await answer(4))["result"]
            assert listed["structuredContent"]["tasks"] == []
    finally:
        await process.aclose()
