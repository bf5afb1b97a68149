"""Agents and their bearer tokens: create, read, change, revoke, delete; and authenticating a token.

A token is `pao_` + the token row's id (32 hex digits) + 43 random URL-safe characters. It is
returned once, when made; only a sha256 of its random part is stored. Authenticating looks the
row up by id (one indexed read) and compares hashes with `hmac.compare_digest`, so the time taken
does not tell how much of a guess was right. Revoked or expired tokens, and tokens of revoked or
deleted agents, authenticate as nobody.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta
from typing import Final
from uuid import UUID, uuid4

import asyncpg
from pydantic import BaseModel, Field

from pao_orchestrator.engine import lifecycle
from pao_orchestrator.engine.audit import record, require
from pao_orchestrator.engine.models import Agent, AgentInfo, TokenInfo
from pao_orchestrator.engine.paging import decode_cursor, page
from pao_orchestrator.errors import Conflict, InvalidArgument, NotFound
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.vocabulary import Scope

TOKEN_PREFIX: Final = "pao_"
_ID_LENGTH: Final = 32
_SECRET_BYTES: Final = 32
MAX_TOKEN_LENGTH: Final = 256
AGENT_NAME: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


class CreatedAgent(BaseModel):
    agent: AgentInfo
    token: str = Field(description="The bearer token. Shown this once: store it now; pao keeps only a hash.")
    token_id: UUID


class UpdatedAgent(BaseModel):
    agent: AgentInfo
    token: str | None = Field(default=None, description="The new token when one was asked for; shown once.")


def _hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_token() -> tuple[UUID, str, str]:
    """(token id, the token to hand out once, the hash to store)."""
    token_id = uuid4()
    secret = secrets.token_urlsafe(_SECRET_BYTES)
    return token_id, f"{TOKEN_PREFIX}{token_id.hex}{secret}", _hash(secret)


def parse_token(token: str) -> tuple[UUID, str] | None:
    """(token id, secret part) of a well-formed token; None otherwise."""
    if not token.startswith(TOKEN_PREFIX) or len(token) > MAX_TOKEN_LENGTH:
        return None
    body = token[len(TOKEN_PREFIX) :]
    try:
        token_id = UUID(hex=body[:_ID_LENGTH])
    except ValueError:
        return None
    secret = body[_ID_LENGTH:]
    return (token_id, secret) if secret and len(body[:_ID_LENGTH]) == _ID_LENGTH else None


async def authenticate(db: asyncpg.Pool, token: str) -> Agent | None:
    """The live agent a usable token belongs to, or None."""
    parsed = parse_token(token)
    if parsed is None:
        return None
    token_id, secret = parsed
    found = await agent_store.credential(db, token_id)
    if found is None:
        return None
    if not hmac.compare_digest(_hash(secret), found.secret_hash):
        return None
    return Agent(
        id=found.id, name=found.name, scopes=found.scopes, is_owner=found.is_owner, created_at=found.created_at
    )


def _scopes(scopes: list[str], field: str = "scopes") -> list[str]:
    known = {s.value for s in Scope}
    unknown = [s for s in scopes if s not in known]
    if unknown:
        raise InvalidArgument(
            field, f"unknown scope(s) {', '.join(repr(u) for u in unknown)}; scopes are: {', '.join(sorted(known))}"
        )
    return sorted(set(scopes))


def _name(name: str) -> str:
    if not AGENT_NAME.fullmatch(name):
        raise InvalidArgument(
            "name", f"{name[:80]!r}: 1-64 letters, digits and . _ @ -, starting with a letter or digit"
        )
    return name


def _expiry(expires_in_seconds: int | None, now: datetime) -> datetime | None:
    return now + timedelta(seconds=expires_in_seconds) if expires_in_seconds is not None else None


async def _info(conn: asyncpg.Connection, row: agent_store.AgentRow, now: datetime) -> AgentInfo:
    tokens = [
        TokenInfo(
            id=t.id,
            created_at=t.created_at,
            expires_at=t.expires_at,
            revoked_at=t.revoked_at,
            active=t.revoked_at is None and (t.expires_at is None or t.expires_at > now) and row.deleted_at is None,
        )
        for t in await agent_store.tokens(conn, row.id)
    ]
    return AgentInfo.model_validate({**row.as_dict(), "tokens": tokens})


def _not_found(agent_id: UUID) -> NotFound:
    return NotFound(f"agent {agent_id} does not exist; list_agents shows the agents")


async def create_agent(
    db: asyncpg.Pool,
    caller: Agent,
    *,
    name: str,
    scopes: list[str],
    description: str,
    expires_in_seconds: int | None,
    now: datetime,
) -> CreatedAgent:
    require(caller, Scope.ADMIN)
    name = _name(name)
    wanted = _scopes(scopes)
    token_id, token, secret_hash = new_token()
    async with db.acquire() as conn, conn.transaction():
        row = await agent_store.insert(conn, name=name, scopes=wanted, description=description)
        if row is None:
            raise Conflict(f"an agent named {name!r} already exists; choose another name or update_agent it")
        await agent_store.insert_token(
            conn,
            token_id=token_id,
            agent_id=row.id,
            secret_hash=secret_hash,
            expires_at=_expiry(expires_in_seconds, now),
        )
        info = await _info(conn, row, now)
        await record(conn, caller, "create_agent", "agent", row.id, {"name": name, "scopes": wanted})
    return CreatedAgent(agent=info, token=token, token_id=token_id)


async def get_agent(db: asyncpg.Pool, caller: Agent, agent_id: UUID, *, now: datetime) -> AgentInfo:
    require(caller, Scope.ADMIN)
    async with db.acquire() as conn:
        row = await agent_store.get(conn, agent_id)
        if row is None:
            raise _not_found(agent_id)
        info = await _info(conn, row, now)
        await record(conn, caller, "get_agent", "agent", agent_id)  # admin reads are on record too
        return info


async def list_agents(
    db: asyncpg.Pool, caller: Agent, *, include_deleted: bool, limit: int, cursor: str | None, now: datetime
) -> tuple[list[AgentInfo], str | None]:
    require(caller, Scope.ADMIN)
    before = decode_cursor(cursor)
    async with db.acquire() as conn:
        rows = await agent_store.list_page(conn, include_deleted=include_deleted, before=before, limit=limit + 1)
        kept, next_cursor = page(rows, limit)
        infos = [await _info(conn, r, now) for r in kept]
        await record(conn, caller, "list_agents", "agent", None, {"count": len(infos)})
        return infos, next_cursor


async def update_agent(
    db: asyncpg.Pool,
    caller: Agent,
    agent_id: UUID,
    *,
    name: str | None,
    scopes: list[str] | None,
    description: str | None,
    issue_token: bool,
    expires_in_seconds: int | None,
    revoke_token_id: UUID | None,
    now: datetime,
) -> UpdatedAgent:
    require(caller, Scope.ADMIN)
    name = _name(name) if name is not None else None
    wanted = _scopes(scopes) if scopes is not None else None
    token: str | None = None
    async with db.acquire() as conn, conn.transaction():
        current = await agent_store.get(conn, agent_id)
        if current is None:
            raise _not_found(agent_id)
        if current.deleted_at is not None:
            raise Conflict(f"agent {agent_id} was deleted; its record stays readable but cannot change")
        if current.is_owner and wanted is not None and Scope.ADMIN not in wanted:
            raise Conflict("the local owner agent keeps the admin scope")
        try:
            row = await agent_store.update(conn, agent_id, name=name, scopes=wanted, description=description)
        except asyncpg.UniqueViolationError:
            raise Conflict(f"an agent named {name!r} already exists; choose another name") from None
        assert row is not None
        details: dict[str, object] = {
            key: value
            for key, value in (("name", name), ("scopes", wanted), ("description", description))
            if value is not None
        }
        if revoke_token_id is not None:
            owned = await agent_store.get_token(conn, revoke_token_id)
            if owned is None or owned.agent_id != agent_id:
                raise NotFound(f"agent {agent_id} has no token {revoke_token_id}; get_agent lists its tokens")
            await agent_store.revoke_token(conn, revoke_token_id)
            details["revoked_token"] = str(revoke_token_id)
        if issue_token:
            token_id, token, secret_hash = new_token()
            await agent_store.insert_token(
                conn,
                token_id=token_id,
                agent_id=agent_id,
                secret_hash=secret_hash,
                expires_at=_expiry(expires_in_seconds, now),
            )
            details["new_token"] = str(token_id)
        info = await _info(conn, row, now)
        await record(conn, caller, "update_agent", "agent", agent_id, details)
    return UpdatedAgent(agent=info, token=token)


async def delete_agent(db: asyncpg.Pool, caller: Agent, agent_id: UUID, *, now: datetime) -> AgentInfo:
    """Delete an agent: its tokens stop working at once and its tasks that may still fire are paused (their
    queued runs cancelled); its row, tasks, runs and audit entries stay."""
    require(caller, Scope.ADMIN)
    async with db.acquire() as conn, conn.transaction():
        current = await agent_store.get(conn, agent_id)
        if current is None:
            raise _not_found(agent_id)
        if current.is_owner:
            raise Conflict("the local owner agent cannot be deleted")
        row = await agent_store.delete(conn, agent_id) or current  # deleting a deleted agent changes nothing
        paused = await lifecycle.pause_tasks_of_agent(conn, caller, row)
        info = await _info(conn, row, now)
        info.paused_tasks = paused
        await record(conn, caller, "delete_agent", "agent", agent_id, {"name": row.name, "paused_tasks": len(paused)})
    return info


async def revoke(db: asyncpg.Pool, caller: Agent, target: UUID, *, now: datetime) -> str:
    """Revoke a token (by its id) or an agent with all its tokens (by the agent's id); say which."""
    require(caller, Scope.ADMIN)
    async with db.acquire() as conn, conn.transaction():
        token = await agent_store.get_token(conn, target)
        if token is not None:
            await agent_store.revoke_token(conn, target)
            await record(conn, caller, "revoke_token", "token", target, {"agent_id": str(token.agent_id)})
            return f"token {target} of agent {token.agent_id} revoked"
        agent = await agent_store.get(conn, target)
        if agent is None:
            raise NotFound(f"no agent or token has the id {target}; pao agents list shows them")
        if agent.is_owner:
            raise Conflict("the local owner agent cannot be revoked")
        await agent_store.revoke(conn, target)
        await record(conn, caller, "revoke_agent", "agent", target, {"name": agent.name})
        return f"agent {agent.name!r} ({target}) and all its tokens revoked"
