"""Reading and writing `agents` and `audit_log`."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg
from pao_orchestrator.store.queries import sql


async def ensure_owner(conn: asyncpg.Connection) -> dict[str, Any]:
    """The local owner agent (admin), created on first start."""
    row = await conn.fetchrow(sql("get_owner_agent"))
    if row is None:
        row = await conn.fetchrow(sql("insert_owner_agent"))
        if row is None:  # another process created it between our two statements
            row = await conn.fetchrow(sql("get_owner_agent"))
    return dict(row)


async def by_token_hash(conn: asyncpg.Connection, token_hash: str) -> dict[str, Any] | None:
    row = await conn.fetchrow(sql("get_agent_by_token_hash"), token_hash)
    return dict(row) if row is not None else None


async def audit(
    conn: asyncpg.Connection,
    *,
    agent_id: UUID | None,
    action: str,
    target_type: str,
    target_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    await conn.execute(sql("insert_audit"), agent_id, action, target_type, target_id, details or {})
