"""The `agents` table: who calls the tools (statements in agents.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record


@dataclass(frozen=True)
class AgentRecord(Record):
    """A row of `agents` (never with its token: only a hash of it is stored)."""

    id: UUID
    name: str
    scopes: list[str]
    is_owner: bool
    created_at: datetime
    revoked_at: datetime | None


async def ensure_owner(conn: asyncpg.Connection) -> AgentRecord:
    """The local owner agent (admin), created on first start."""
    row = await conn.fetchrow(sql("get_owner_agent"))
    if row is None:
        row = await conn.fetchrow(sql("insert_owner_agent"))
        if row is None:  # another process created it between our two statements
            row = await conn.fetchrow(sql("get_owner_agent"))
    return AgentRecord.from_row(row)


async def by_token_hash(conn: asyncpg.Connection, token_hash: str) -> AgentRecord | None:
    row = await conn.fetchrow(sql("get_agent_by_token_hash"), token_hash)
    return AgentRecord.from_row(row) if row is not None else None
