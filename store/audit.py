"""The `audit_log` table: who did what to which target, when, in which request, and how it ended
(statements in audit.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record


@dataclass(frozen=True)
class AuditRecord(Record):
    """A row of `audit_log`."""

    id: int
    agent_id: UUID | None
    agent_name: str | None
    action: str
    target_type: str
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None
    outcome: str
    created_at: datetime


@dataclass(frozen=True)
class NewAuditEntry:
    """An entry to write (the database adds its id and time): for statements that write one along with
    what they audit (events.store)."""

    agent_id: UUID | None
    agent_name: str | None
    action: str
    target_type: str
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    agent_id: UUID | None,
    action: str,
    target_type: str,
    target_id: str | None,
    details: dict[str, Any] | None = None,
    agent_name: str | None = None,
    request_id: str | None = None,
    outcome: str = "ok",
) -> None:
    """Write one audit entry (in the caller's transaction when given a connection)."""
    await conn.execute(
        sql("insert_audit"),
        agent_id,
        agent_name,
        action,
        target_type,
        target_id,
        details or {},
        request_id,
        outcome,
    )


async def list_page(
    conn: asyncpg.Connection,
    *,
    agent_id: UUID | None,
    action: str | None,
    target_type: str | None,
    target_id: str | None,
    since: datetime | None,
    until: datetime | None,
    before_id: int | None,
    limit: int,
) -> list[AuditRecord]:
    rows = await conn.fetch(sql("list_audit"), agent_id, action, target_type, target_id, since, until, before_id, limit)
    return [AuditRecord.from_row(r) for r in rows]
