"""Reading and writing the `tasks` table."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg
from pao_orchestrator.errors import NotFound
from pao_orchestrator.store.queries import sql

# A task's definition (what create_task and update_task set), in the order insert_task and
# update_task_fields take them.
DEFINITION = (
    "title",
    "description",
    "schedule_kind",
    "schedule_expr",
    "timezone",
    "payload",
    "priority",
    "dedupe_key",
    "dedupe_window_seconds",
    "max_retries",
    "backoff_strategy",
    "backoff_base_seconds",
    "backoff_max_seconds",
    "concurrency_key",
    "misfire_policy",
    "misfire_grace_seconds",
    "overlap_policy",
)


async def insert(
    conn: asyncpg.Connection, fields: dict[str, Any], *, created_by: UUID, now: datetime
) -> dict[str, Any]:
    row = await conn.fetchrow(
        sql("insert_task"),
        *(fields[name] for name in DEFINITION),
        fields["status"],
        fields["next_fire_at"],
        created_by,
        now,
    )
    return dict(row)


async def get(conn: asyncpg.Connection, task_id: UUID, *, for_update: bool = False) -> dict[str, Any]:
    row = await conn.fetchrow(sql("get_task_for_update" if for_update else "get_task"), task_id)
    if row is None:
        raise NotFound(f"task {task_id} does not exist; list_tasks shows the tasks you can see")
    return dict(row)


async def list_page(
    conn: asyncpg.Connection,
    *,
    status: str | None,
    schedule_kind: str | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        sql("list_tasks"),
        status,
        schedule_kind,
        before[0] if before else None,
        before[1] if before else None,
        limit,
    )
    return [dict(r) for r in rows]
