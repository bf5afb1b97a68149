"""Deleting old history in batches (statements in retention.sql): finished runs with their steps,
events, audit entries. One replica prunes at a time (a session advisory lock)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

import asyncpg

from pao_orchestrator.store.queries import sql


class History(StrEnum):
    """What retention prunes; the value is the table."""

    RUNS = "runs"
    EVENTS = "events"
    AUDIT = "audit_log"


_STATEMENTS = {History.RUNS: "prune_runs", History.EVENTS: "prune_events", History.AUDIT: "prune_audit"}


async def try_lock(conn: asyncpg.Connection) -> bool:
    """Take the pruning lock on this connection's session; False when another replica holds it."""
    return bool(await conn.fetchval(sql("retention_try_lock")))


async def unlock(conn: asyncpg.Connection) -> None:
    await conn.fetchval(sql("retention_unlock"))


async def prune_batch(conn: asyncpg.Connection, history: History, before: datetime, limit: int) -> int:
    """Delete up to `limit` rows of `history` older than `before` (one transaction); how many went."""
    status = await conn.execute(sql(_STATEMENTS[history]), before, limit)
    return int(status.split()[-1])
