"""The audit log as the engine writes and admins read it: who, what, target, when, request, outcome.

Entries hold names, ids and a few descriptive fields: never a token, never a secret's value
(pipelines and arguments are not copied in; a task's title and schedule are).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.engine.models import Agent, AuditEntry
from pao_orchestrator.errors import InvalidArgument, PermissionDenied
from pao_orchestrator.store import NewAuditEntry
from pao_orchestrator.store import audit as audit_store
from pao_orchestrator.vocabulary import AuditOutcome, Scope


def entry(
    caller: Agent | None, action: str, target_type: str, target_id: str | UUID | None, details: dict[str, Any]
) -> NewAuditEntry:
    """An entry for a statement that writes it along with what it audits (a published event)."""
    return NewAuditEntry(
        agent_id=caller.id if caller is not None else None,
        agent_name=caller.name if caller is not None else None,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        details=details,
        request_id=caller.request_id if caller is not None else None,
    )


async def record(
    conn: asyncpg.Connection | asyncpg.Pool,
    caller: Agent | None,
    action: str,
    target_type: str,
    target_id: str | UUID | None,
    details: dict[str, Any] | None = None,
    *,
    outcome: AuditOutcome = AuditOutcome.OK,
    request_id: str | None = None,
) -> None:
    """Write one entry, in the caller's transaction when `conn` is a connection."""
    await audit_store.record(
        conn,
        agent_id=caller.id if caller is not None else None,
        agent_name=caller.name if caller is not None else None,
        action=action,
        target_type=target_type,
        target_id=str(target_id) if target_id is not None else None,
        details=details,
        request_id=request_id or (caller.request_id if caller is not None else None),
        outcome=outcome,
    )


class DeniedThrottle:
    """At most one audit entry per `window` seconds for a repeated refusal (same agent, action, kind of
    target and reason), so a client hammering with a bad token cannot fill the audit log at request rate.

    The first refusal is written at once; those that follow within the window are counted, and the next
    entry written carries `repeated`: how many were left out since the previous one (and the latest
    target). Kept per process, bounded to `max_keys` kinds of refusal.
    """

    def __init__(self, window: float = 10.0, *, max_keys: int = 10_000, clock: Callable[[], float] = time.monotonic):
        self._window = window
        self._max_keys = max_keys
        self._clock = clock
        self._last: dict[tuple[Any, ...], tuple[float, int]] = {}

    def admit(self, key: tuple[Any, ...]) -> int | None:
        """None to leave this refusal out; else the number left out before it (write it with that)."""
        now = self._clock()
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self._window:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        if len(self._last) >= self._max_keys:
            self._last.clear()
        self._last[key] = (now, 0)
        return seen[1] if seen is not None else 0


def require(caller: Agent, scope: Scope) -> None:
    """PermissionDenied naming the scope unless `caller` has it."""
    if not caller.can(scope):
        raise PermissionDenied(
            f"agent {caller.name!r} lacks the scope {scope.value!r} this needs "
            f"(its scopes: {', '.join(caller.scopes) or 'none'}); an admin can grant it with update_agent",
            scope=scope,
        )


def _cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    if not cursor.isdigit() or len(cursor) > 18:
        raise InvalidArgument("cursor", "is not a cursor this server returned; omit it to start from the newest")
    return int(cursor)


async def list_audit(
    db: asyncpg.Pool,
    caller: Agent,
    *,
    agent_id: UUID | None,
    action: str | None,
    target_type: str | None,
    target_id: str | None,
    since: datetime | None,
    until: datetime | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[AuditEntry], str | None]:
    """Entries newest first, filtered; admins only."""
    require(caller, Scope.ADMIN)
    # An instant without an offset is read as UTC.
    since = since.replace(tzinfo=UTC) if since is not None and since.tzinfo is None else since
    until = until.replace(tzinfo=UTC) if until is not None and until.tzinfo is None else until
    async with db.acquire() as conn:
        rows = await audit_store.list_page(
            conn,
            agent_id=agent_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
            before_id=_cursor(cursor),
            limit=limit + 1,
        )
        # Reading the audit log is an admin action, recorded after the read (so it is not in it).
        await record(conn, caller, "list_audit", "audit_log", None, {"count": min(len(rows), limit)})
    kept = rows[:limit]
    next_cursor = str(kept[-1].id) if len(rows) > limit and kept else None
    return [AuditEntry.model_validate(r.as_dict()) for r in kept], next_cursor
