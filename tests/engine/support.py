"""Helpers for engine tests: an engine on the test database, tasks, and waiting for runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from uuid import UUID

from engine.app import Engine, open_engine
from engine.models import Run
from engine.settings import Settings

TERMINAL = frozenset({"succeeded", "failed", "cancelled", "skipped"})


def settings_for(database_url: str, mcp_config: Path, tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "mcp_config": mcp_config,
        "data_dir": tmp_path / "data",
        "lease_seconds": 5.0,
        **overrides,
    }
    return Settings(**values)


@asynccontextmanager
async def engine_on(
    database_url: str, mcp_config: Path, tmp_path: Path, *, run_worker: bool = True, **overrides: Any
) -> AsyncIterator[Engine]:
    async with open_engine(settings_for(database_url, mcp_config, tmp_path, **overrides), run_worker=run_worker) as e:
        yield e


def task_args(pipeline: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    """create_task arguments for a task that only runs when asked (a far-future once)."""
    return {
        "title": fields.pop("title", "test task"),
        "schedule_kind": "once",
        "schedule_expr": "2099-01-01T00:00:00Z",
        "payload": {"pipeline": pipeline},
        **fields,
    }


async def create(engine: Engine, pipeline: list[dict[str, Any]], **fields: Any) -> UUID:
    created = await engine.create_task(engine.owner, task_args(pipeline, **fields))
    return created.task.id


async def wait_run(engine: Engine, run_id: UUID, *, timeout: float = 30, statuses: frozenset[str] = TERMINAL) -> Run:
    async with asyncio.timeout(timeout):
        while True:
            run = await engine.get_run(run_id)
            if run.status in statuses:
                return run
            await asyncio.sleep(0.05)
