"""`pao doctor`: a table of checks, exit 1 when any fails (a broken server, an old schema, Redis down)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from tests.conftest import FIXTURE_SERVER, with_database


def doctor(database_url: str, mcp_config: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PAO_DATA_DIR": str(tmp_path / "data"),
        "PAO_MCP_CONFIG": str(mcp_config),
        "PAO_LOG_LEVEL": "WARNING",
        **env,
    }
    if "REDIS_URL" not in env:
        environ.pop("REDIS_URL", None)
    return subprocess.run(
        [sys.executable, "-m", "pao_orchestrator.server.cli", "doctor"],
        env=environ,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=90,
    )


def table(out: str) -> dict[str, tuple[str, str]]:
    """check name -> (status, detail), from the printed table."""
    lines = out.splitlines()
    status_at, detail_at = lines[0].index("status"), lines[0].index("detail")
    return {line[:status_at].strip(): (line[status_at:detail_at].split()[0], line[detail_at:]) for line in lines[1:-1]}


async def test_doctor_passes_on_a_healthy_setup(database_url: str, fx_config: Path, tmp_path: Path) -> None:
    done = await asyncio.to_thread(doctor, database_url, fx_config, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    rows = table(done.stdout)
    assert rows["database"][0] == "ok" and "PostgreSQL" in rows["database"][1]
    assert rows["migrations"][0] == "ok" and rows["migrations"][1].startswith("current")
    assert rows["redis"][0] == "skip"
    assert rows["server fx"][0] == "ok" and rows["server time"][0] == "ok"
    assert "get_current_time" in rows["server time"][1]
    assert done.stdout.rstrip().endswith("all checks passed")


async def test_doctor_fails_on_a_broken_server_and_names_its_error(database_url: str, tmp_path: Path) -> None:
    config = tmp_path / "mcp.json"
    config.write_text(
        json.dumps(
            {
                "mcpServers": {
                    "fx": {"command": sys.executable, "args": [str(FIXTURE_SERVER)]},
                    "broken": {
                        "command": sys.executable,
                        "args": ["-c", "import sys; print('no API key', file=sys.stderr); sys.exit(3)"],
                    },
                    "missing": {"command": str(tmp_path / "no-such-server")},
                }
            }
        )
    )
    stream = f"pao-test-{uuid.uuid4().hex[:8]}"
    redis = aioredis.from_url("redis://127.0.0.1:6379/0")
    try:
        await redis.xadd(stream, {"topic": "t", "data": "{}"})
        await redis.xgroup_create(stream, "relay", id="0")
        done = await asyncio.to_thread(
            doctor,
            database_url,
            config,
            tmp_path,
            REDIS_URL="redis://127.0.0.1:6379/0",
            PAO_STREAM_OUT=stream,
            PAO_STREAM_IN=f"{stream}-in",
        )
    finally:
        await redis.delete(stream)
        await redis.aclose()
    assert done.returncode == 1, done.stdout + done.stderr
    rows = table(done.stdout)
    assert rows["server fx"][0] == "ok"
    assert rows["server broken"][0] == "fail" and "exited with code 3" in rows["server broken"][1]
    assert rows["server missing"][0] == "fail" and "No such file" in rows["server missing"][1]
    assert rows["database"][0] == "ok" and rows["migrations"][0] == "ok"
    assert rows["redis"][0] == "ok"
    assert (
        f"{stream}: 1 entries" in rows["redis"][1]
        and "group relay (0 consumer(s), 0 pending, lag 1)" in rows["redis"][1]
    )
    assert f"{stream}-in: empty" in rows["redis"][1]
    assert done.stdout.rstrip().endswith("2 check(s) failed")


async def test_doctor_fails_on_an_unmigrated_database_and_unreachable_redis(
    pg_dsn: str, mcp_config: Path, tmp_path: Path
) -> None:
    name = f"pao_doctor_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
        done = await asyncio.to_thread(
            doctor, with_database(pg_dsn, name), mcp_config, tmp_path, REDIS_URL="redis://127.0.0.1:1/0"
        )
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    assert done.returncode == 1
    rows = table(done.stdout)
    assert rows["migrations"] == ("fail", rows["migrations"][1])
    assert "run `pao migrate`" in rows["migrations"][1]
    assert rows["redis"][0] == "fail" and "ConnectionError" in rows["redis"][1]
    assert rows["server time"][0] == "ok"


async def test_doctor_fails_on_an_unreachable_database(mcp_config: Path, tmp_path: Path) -> None:
    done = await asyncio.to_thread(doctor, "postgresql://nobody@127.0.0.1:1/none", mcp_config, tmp_path)
    assert done.returncode == 1
    rows = table(done.stdout)
    assert rows["database"][0] == "fail" and rows["migrations"][0] == "skip"
    assert "Traceback" not in done.stdout + done.stderr
