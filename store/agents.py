"""The `agents` and `agent_tokens` tables: who calls the tools, and the tokens they prove it with
(statements in agents.sql)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import asyncpg

from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record


@dataclass(frozen=True)
class AgentRecord(Record):
    """A row of `agents` (never with a token: only hashes of token secrets are stored, elsewhere)."""

    id: UUID
    name: str
    scopes: list[str]
    is_owner: bool
    created_at: datetime
    revoked_at: datetime | None


@dataclass(frozen=True)
class AgentRow(AgentRecord):
    """A row of `agents` with what admins see of it."""

    description: str
    updated_at: datetime
    deleted_at: datetime | None


@dataclass(frozen=True)
class TokenRecord(Record):
    """A row of `agent_tokens`, without its hash."""

    id: UUID
    agent_id: UUID
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None


@dataclass(frozen=True)
class Credential(Record):
    """What authenticating a token needs: the stored hash and the agent it belongs to."""

    secret_hash: str
    expires_at: datetime | None
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


async def insert(conn: asyncpg.Connection, *, name: str, scopes: list[str], description: str) -> AgentRow | None:
    """The new agent, or None when a live agent already has this name."""
    try:
        row = await conn.fetchrow(sql("insert_agent"), name, scopes, description)
    except asyncpg.UniqueViolationError:
        return None
    return AgentRow.from_row(row)


async def get(conn: asyncpg.Connection, agent_id: UUID) -> AgentRow | None:
    row = await conn.fetchrow(sql("get_agent"), agent_id)
    return AgentRow.from_row(row) if row is not None else None


async def list_page(
    conn: asyncpg.Connection, *, include_deleted: bool, before: tuple[datetime, UUID] | None, limit: int
) -> list[AgentRow]:
    at, last = before if before is not None else (None, None)
    rows = await conn.fetch(sql("list_agents"), include_deleted, at, last, limit)
    return [AgentRow.from_row(r) for r in rows]


async def update(
    conn: asyncpg.Connection,
    agent_id: UUID,
    *,
    name: str | None,
    scopes: list[str] | None,
    description: str | None,
) -> AgentRow | None:
    """The updated agent; None when it does not exist, is deleted, or the name is taken (UniqueViolation)."""
    row = await conn.fetchrow(sql("update_agent"), agent_id, name, scopes, description)
    return AgentRow.from_row(row) if row is not None else None


async def delete(conn: asyncpg.Connection, agent_id: UUID) -> AgentRow | None:
    row = await conn.fetchrow(sql("delete_agent"), agent_id)
    return AgentRow.from_row(row) if row is not None else None


async def revoke(conn: asyncpg.Connection, agent_id: UUID) -> AgentRow | None:
    row = await conn.fetchrow(sql("revoke_agent"), agent_id)
    if row is not None:
        await conn.execute(sql("revoke_tokens_of_agent"), agent_id)
    return AgentRow.from_row(row) if row is not None else None


async def insert_token(
    conn: asyncpg.Connection, *, token_id: UUID, agent_id: UUID, secret_hash: str, expires_at: datetime | None
) -> TokenRecord:
    return TokenRecord.from_row(await conn.fetchrow(sql("insert_token"), token_id, agent_id, secret_hash, expires_at))


async def tokens(conn: asyncpg.Connection, agent_id: UUID) -> list[TokenRecord]:
    return [TokenRecord.from_row(r) for r in await conn.fetch(sql("tokens_of_agent"), agent_id)]


async def get_token(conn: asyncpg.Connection, token_id: UUID) -> TokenRecord | None:
    row = await conn.fetchrow(sql("get_token"), token_id)
    return TokenRecord.from_row(row) if row is not None else None


async def revoke_token(conn: asyncpg.Connection, token_id: UUID) -> TokenRecord | None:
    row = await conn.fetchrow(sql("revoke_token"), token_id)
    return TokenRecord.from_row(row) if row is not None else None


async def credential(conn: asyncpg.Connection | asyncpg.Pool, token_id: UUID) -> Credential | None:
    """The usable token with this id and its live agent, or None."""
    row = await conn.fetchrow(sql("authenticate"), token_id)
    return Credential.from_row(row) if row is not None else None
