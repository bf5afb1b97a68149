"""What a user installs, tried as a user would: run with the python of a clean venv holding only the wheel.

Checks the wheel's contents, then `pao --version`, `pao migrate` on a fresh
database, and one pipeline end to end over stdio (a real downstream server,
`mcp-server-time`, and a built-in step), from a folder that is not the work tree.

Usage: .ci/wheel_smoke.py WHEEL DATABASE_URL
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from mcp import Client, StdioServerParameters


def check_wheel(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    tops = {name.split("/", 1)[0] for name in names if "/" in name and not name.split("/", 1)[0].endswith(".dist-info")}
    assert tops == {"pao_orchestrator"}, f"the wheel installs {sorted(tops)}; only pao_orchestrator is expected"
    assert any(n.startswith("pao_orchestrator/migrations/0001_") and n.endswith(".sql") for n in names), names
    assert any(n.startswith("pao_orchestrator/store/") and n.endswith(".sql") for n in names), names
    print(f"wheel: {len(names)} files, one package (pao_orchestrator), migrations and SQL included")


async def run_pipeline(pao: Path, env: dict[str, str], cwd: Path) -> None:
    params = StdioServerParameters(command=str(pao), args=["serve"], env=env, cwd=str(cwd))
    async with asyncio.timeout(120), Client(params) as client:
        created = await client.call_tool(
            "create_task",
            {
                "title": "wheel smoke",
                "schedule_kind": "cron",
                "schedule_expr": "0 9 * * *",
                "payload": {
                    "pipeline": [
                        {"id": "now", "uses": "time.get_current_time", "with": {"timezone": "Europe/Chisinau"}},
                        {"id": "echo", "uses": "pao.noop", "with": {"tz": "${steps.now.timezone}"}, "save_as": "out"},
                    ]
                },
            },
        )
        assert not created.is_error, created.content
        assert created.structured_content is not None
        task_id = created.structured_content["task"]["id"]
        started = await client.call_tool("run_now", {"task_id": task_id})
        assert not started.is_error, started.content
        assert started.structured_content is not None
        run_id = started.structured_content["run_id"]
        while True:
            result = await client.call_tool("get_run", {"run_id": run_id})
            assert result.structured_content is not None
            run = result.structured_content
            if run["status"] not in ("queued", "running"):
                break
            await asyncio.sleep(0.1)
        assert run["status"] == "succeeded", run
        assert run["outputs"] == {"out": {"tz": "Europe/Chisinau"}}, run["outputs"]
        print(f"pipeline: run {run_id} succeeded with outputs {run['outputs']}")


def main() -> None:
    wheel, database_url = Path(sys.argv[1]), sys.argv[2]
    check_wheel(wheel)
    pao = Path(sys.executable).parent / "pao"
    with tempfile.TemporaryDirectory(prefix="pao-wheel-") as folder:
        cwd = Path(folder)
        (cwd / "mcp.json").write_text(
            json.dumps({"mcpServers": {"time": {"command": "mcp-server-time", "args": ["--local-timezone", "UTC"]}}})
        )
        env = {
            **os.environ,
            "DATABASE_URL": database_url,
            "PAO_DATA_DIR": str(cwd / "data"),
            "PAO_LOG_LEVEL": "WARNING",
        }
        version = subprocess.run([pao, "--version"], env=env, cwd=cwd, check=True, capture_output=True, text=True)
        print(f"version: {version.stdout.strip()}")
        migrated = subprocess.run([pao, "migrate"], env=env, cwd=cwd, check=True, capture_output=True, text=True)
        assert "applied" in migrated.stdout, migrated.stdout
        print(f"migrate: {migrated.stdout.strip()}")
        asyncio.run(run_pipeline(pao, env, cwd))


if __name__ == "__main__":
    main()
