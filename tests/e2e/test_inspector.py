"""The MCP Inspector's CLI (a client that is not ours) lists pao's tools and resource templates over
stdio and creates a task."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

INSPECTOR = "@modelcontextprotocol/inspector@2"

pytestmark = pytest.mark.skipif(shutil.which("npx") is None, reason="the Inspector CLI needs npx (Node.js)")


def inspect(database_url: str, mcp_config: Path, tmp_path: Path, *args: str) -> Any:
    command = [
        "npx", "-y", INSPECTOR, "--cli",
        "-e", f"DATABASE_URL={database_url}",
        "-e", f"PAO_MCP_CONFIG={mcp_config}",
        "-e", f"PAO_DATA_DIR={tmp_path / 'data'}",
        "-e", "PAO_LOG_LEVEL=WARNING",
        sys.executable, "-m", "pao_orchestrator.server.cli", "serve",
        *args,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=100, cwd=tmp_path, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_the_inspector_cli_lists_tools_and_templates_and_creates_a_task(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    tools = inspect(database_url, mcp_config, tmp_path, "--method", "tools/list")["tools"]
    by_name = {t["name"]: t for t in tools}
    assert {"create_task", "run_now", "get_run", "cancel_run"} <= set(by_name)
    assert by_name["run_now"]["annotations"]["openWorldHint"] is True
    assert all(t.get("title") for t in tools)

    templates = inspect(database_url, mcp_config, tmp_path, "--method", "resources/templates/list")
    assert {t["uriTemplate"] for t in templates["resourceTemplates"]} == {
        "pao://tasks/{task_id}",
        "pao://runs/{run_id}",
        "pao://runs/{run_id}/steps/{step_id}",
        "pao://events/{event_id}",
    }

    pipeline = json.dumps({"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"k": 1}}]})
    created = inspect(
        database_url, mcp_config, tmp_path,
        "--method", "tools/call", "--tool-name", "create_task",
        "--tool-arg", "title=from the inspector", "schedule_kind=once", "schedule_expr=2099-01-01T00:00:00Z",
        f"payload={pipeline}",
    )  # fmt: skip
    assert not created.get("isError"), created
    task = created["structuredContent"]["task"]
    assert task["title"] == "from the inspector" and task["payload"]["pipeline"][0]["with"] == {"k": 1}
    assert json.loads(created["content"][0]["text"]) == created["structuredContent"]
