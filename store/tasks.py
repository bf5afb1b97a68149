"""Reading and writing the `tasks` table."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from store.errors import NotFound
from store.queries import sql

# Columns an update may set; the engine validates values before they arrive here.
UPDATABLE = frozenset(
    {
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
        "status",
        "next_fire_at",
        "snoozed_until",
        "last_fired_at",
    }
)


async def insert(
    conn: asyncpg.Connection, fields: dict[str, Any], *, created_by: UUID, now: datetime
) -> dict[str, Any]:
    row = await conn.fetchrow(
        sql("insert_task"),
        fields["title"],
        fields["description"],
        fields["schedule_kind"],
        fields["schedule_expr"],
        fields["timezone"],
        fields["payload"],
        fields["priority"],
        fields["dedupe_key"],
        fields["dedupe_window_seconds"],
        fields["max_retries"],
        fields["backoff_strategy"],
        fields["backoff_base_seconds"],
        fields["backoff_max_seconds"],
        fields["concurrency_key"],
        fields["misfire_policy"],
        fields["misfire_grace_seconds"],
        fields["overlap_policy"],
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


async def update(conn: asyncpg.Connection, task_id: UUID, changes: dict[str, Any]) -> dict[str, Any]:
    """Set the given columns (names checked against UPDATABLE) and bump updated_at."""
    unknown = set(changes) - UPDATABLE
    if unknown:
        raise ValueError(f"not updatable: {sorted(unknown)}")
    if not changes:
        return await get(conn, task_id)
    columns = sorted(changes)
    # Column names come from the UPDATABLE allow-list above, never from the caller; values are bound.
    assignments = ", ".join(f"{name} = ${i}" for i, name in enumerate(columns, start=2))
    row = await conn.fetchrow(
        f"UPDATE tasks SET {assignments}, updated_at = now() WHERE id = $1 RETURNING *",
        task_id,
        *(changes[name] for name in columns),
    )
    if row is None:
        raise NotFound(f"task {task_id} does not exist")
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
