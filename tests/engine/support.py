"""Helpers for engine tests: an engine on the test database, tasks, and waiting for runs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.engine import Agent, Engine, Run, Settings, open_engine
from pao_orchestrator.engine import tasks as task_service
from pao_orchestrator.store import agents as agent_store

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
            run = await engine.get_run(engine.owner, run_id)
            if run.status in statuses:
                return run
            await asyncio.sleep(0.05)


# --- helpers for tests that call the engine's task services directly, with a pinned clock

NOOP = {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {}}]}


class NoTools:
    """A catalog without downstream servers: these tasks use built-in steps only."""

    def server_names(self) -> list[str]:
        return []

    async def tool_schema(self, server: str, tool: str) -> dict[str, Any] | None:
        return None


async def owner(db: asyncpg.Pool) -> Agent:
    async with db.acquire() as conn:
        return Agent.model_validate((await agent_store.ensure_owner(conn)).as_dict())


async def new_task(
    db: asyncpg.Pool, expr: str, *, created: datetime, kind: str = "cron", tz: str = "Europe/Chisinau", **fields: Any
) -> UUID:
    """A task created as if at `created` (the schedule's anchor and first fire follow from it)."""
    arguments = {"title": "t", "schedule_kind": kind, "schedule_expr": expr, "timezone": tz, "payload": NOOP, **fields}
    made = await task_service.create_task(db, NoTools(), await owner(db), arguments, clock=lambda: created)
    return made.task.id


async def task_row(db: asyncpg.Pool, task_id: UUID) -> asyncpg.Record:
    async with db.acquire() as conn:
        return await conn.fetchrow("SELECT * FROM tasks WHERE id = $1", task_id)


async def runs_of(db: asyncpg.Pool, task_id: UUID) -> list[asyncpg.Record]:
    async with db.acquire() as conn:
        return await conn.fetch("SELECT * FROM runs WHERE task_id = $1 ORDER BY scheduled_for", task_id)
