"""The `audit_log` table: one row per change an agent made (statements in audit.sql)."""

from __future__ import annotations

from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.store.queries import sql


async def record(
    conn: asyncpg.Connection,
    *,
    agent_id: UUID | None,
    action: str,
    target_type: str,
    target_id: str | None,
    details: dict[str, Any] | None = None,
) -> None:
    """Write one audit entry in the caller's transaction."""
    await conn.execute(sql("insert_audit"), agent_id, action, target_type, target_id, details or {})
