"""Logs: JSON lines off a terminal, text on one; run and request context on every line; no secret, ever."""

from __future__ import annotations

import io
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import anyio
from mcp import Client, StdioServerParameters
from mcp.client.stdio import stdio_client

from pao_orchestrator import logs
from tests.e2e.test_stdio import call, wait_for_run

SECRET = "tok-Zq8dW3-never-logged"


async def test_a_run_that_uses_a_secret_logs_json_with_its_context_and_never_the_secret(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PAO_MCP_CONFIG": str(fx_config),
        "PAO_DATA_DIR": str(tmp_path / "data"),
        "PAO_LOG_LEVEL": "DEBUG",
        "PAO_SECRET_TOKEN": SECRET,
    }
    env.pop("PAO_LOG_FORMAT", None)
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "pao_orchestrator.server.cli", "serve"], env=env, cwd=str(tmp_path)
    )
    log_path = tmp_path / "stderr.log"
    pipeline = {
        "pipeline": [
            {"id": "use", "uses": "fx.echo", "with": {"message": "Bearer ${secrets.TOKEN}"}},
            {"id": "flaky", "uses": "fx.flaky", "with": {"path": str(tmp_path / "flaky"), "fail_times": 1}},
            # Its error text holds the secret: the run's error, and its log line, show ***.
            {"id": "leak", "uses": "fx.reject", "with": {"message": "rejected ${secrets.TOKEN}"}},
        ],
        # The downstream server prints the secret in its own traceback, on its stderr.
        "on_failure": [{"id": "alert", "uses": "fx.fail", "with": {"message": "${run.error} ${secrets.TOKEN}"}}],
    }
    with log_path.open("w") as errlog, anyio.fail_after(90):
        async with Client(stdio_client(params, errlog=errlog)) as client:
            created = await call(
                client,
                "create_task",
                {
                    "title": "uses a secret",
                    "schedule_kind": "once",
                    "schedule_expr": "2099-01-01T00:00:00Z",
                    "payload": pipeline,
                    "max_retries": 1,
                    "backoff_strategy": "none",
                },
            )
            task_id = created["task"]["id"]
            started = await call(client, "run_now", {"task_id": task_id})
            run = await wait_for_run(client, started["run_id"])
            refused = await client.call_tool("get_task", {"task_id": "00000000-0000-0000-0000-000000000000"})
    assert run["status"] == "failed" and run["attempt"] == 2
    assert "rejected ***" in run["error"]
    assert refused.is_error
    text = log_path.read_text()
    assert SECRET not in text
    entries = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    assert all({"ts", "level", "logger", "message"} <= set(e) for e in entries)
    of_run = [e for e in entries if e.get("run_id") == run["id"]]
    assert {e["attempt"] for e in of_run} == {1, 2}
    assert all(e["task_id"] == task_id for e in of_run)
    assert any("run failed" in e["message"] and "rejected ***" in e["message"] for e in of_run)
    # The downstream server's own stderr arrives as log lines too, masked.
    assert any(e["logger"].endswith("downstream.stderr") and "***" in e["message"] for e in entries)
    tools = [e for e in entries if e.get("tool")]
    by_tool = {e["tool"]: e for e in tools}
    assert {"create_task", "run_now", "get_run", "get_task"} <= set(by_tool)
    assert "refused" in by_tool["get_task"]["message"]
    request_ids = [e["request_id"] for e in tools]
    assert all(len(r) == 16 for r in request_ids)
    assert len(set(request_ids)) == len(request_ids)  # one line per call here: one id per call
    assert not any(e.get("run_id") for e in tools)  # a tool call's lines do not carry a run


def test_text_on_a_terminal_json_off_it_and_secrets_masked_in_both() -> None:
    class Tty(io.StringIO):
        def isatty(self) -> bool:
            return True

    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        for stream, expected in ((Tty(), "text"), (io.StringIO(), "json")):
            logs.configure("INFO", None, secrets=[SECRET], stream=stream)
            with logs.bind(run_id="r1", task_id="t1", attempt=2):
                logging.getLogger("pao_orchestrator.test").info("calling with %s", SECRET)
            line = stream.getvalue().strip()
            assert SECRET not in line
            if expected == "json":
                entry: dict[str, Any] = json.loads(line)
                assert entry["message"] == "calling with ***"
                assert (entry["run_id"], entry["task_id"], entry["attempt"]) == ("r1", "t1", 2)
            else:
                assert line.endswith("calling with *** [run_id=r1 task_id=t1 attempt=2]")
        forced = io.StringIO()
        logs.configure("INFO", "text", stream=forced)
        logging.getLogger("pao_orchestrator.test").info("plain")
        assert forced.getvalue().rstrip().endswith("pao_orchestrator.test: plain")
    finally:
        for handler in root.handlers[:]:
            root.removeHandler(handler)
        for handler in saved[0]:
            root.addHandler(handler)
        root.setLevel(saved[1])
