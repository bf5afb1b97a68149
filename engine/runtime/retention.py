"""Retention: finished runs (with their steps), events and audit entries older than their horizon are
deleted, in small batches, by one replica at a time.

Every `pao serve` / `pao worker` process runs a pruner; each pass first takes a
session advisory lock, so while one replica prunes the others skip their turn.
A batch is one short `DELETE ... LIMIT` transaction that passes over rows
another transaction holds (SKIP LOCKED): it never waits on the scheduler or a
worker, and they wait on it for at most one batch's rows. Between batches the
pruner pauses, so a long backlog is spread out instead of saturating the disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import asyncpg

from pao_orchestrator.metrics import Metrics
from pao_orchestrator.store import DATABASE_ERRORS
from pao_orchestrator.store import retention as retention_store

log = logging.getLogger(__name__)

History = retention_store.History


@dataclass(frozen=True)
class RetentionPolicy:
    """How long each kind of history is kept (days; 0 keeps it forever) and how pruning paces itself."""

    runs_days: float = 30.0
    events_days: float = 30.0
    audit_days: float = 365.0
    batch_size: int = 1000
    interval_seconds: float = 3600.0
    pause_seconds: float = 0.05

    def horizons(self, now: datetime) -> dict[retention_store.History, datetime]:
        days = {History.RUNS: self.runs_days, History.EVENTS: self.events_days, History.AUDIT: self.audit_days}
        return {kind: now - timedelta(days=d) for kind, d in days.items() if d > 0}


@dataclass
class PruneResult:
    """What one pass did. `locked_out`: another replica was pruning, this one did nothing."""

    deleted: dict[str, int] = field(default_factory=dict)
    batches: int = 0
    longest_batch: float = 0.0
    locked_out: bool = False


class Pruner:
    """Prunes on `policy.interval_seconds`; `prune_once()` is one pass (for tests and operators)."""

    def __init__(
        self,
        db: asyncpg.Pool,
        policy: RetentionPolicy,
        *,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self._db = db
        self._policy = policy
        self._metrics = metrics or Metrics()
        self._clock = clock or (lambda: datetime.now(UTC))
        self._stopping = asyncio.Event()

    async def prune_once(self) -> PruneResult:
        result = PruneResult()
        horizons = self._policy.horizons(self._clock())
        if not horizons:
            return result
        async with self._db.acquire() as conn:
            if not await retention_store.try_lock(conn):
                result.locked_out = True
                return result
            try:
                for kind, before in horizons.items():
                    result.deleted[kind.value] = await self._prune(conn, kind, before, result)
            finally:
                await retention_store.unlock(conn)
        if any(result.deleted.values()):
            log.info(
                "retention: deleted %s in %d batch(es)",
                ", ".join(f"{n} {kind}" for kind, n in result.deleted.items() if n),
                result.batches,
            )
        return result

    async def _prune(
        self, conn: asyncpg.Connection, kind: retention_store.History, before: datetime, result: PruneResult
    ) -> int:
        total = 0
        limit = self._policy.batch_size
        while not self._stopping.is_set():
            started = time.perf_counter()
            deleted = await retention_store.prune_batch(conn, kind, before, limit)
            result.batches += 1
            result.longest_batch = max(result.longest_batch, time.perf_counter() - started)
            total += deleted
            if deleted:
                self._metrics.retention_deleted.labels(kind.value).inc(deleted)
            if deleted < limit:
                break
            await asyncio.sleep(self._policy.pause_seconds)
        return total

    async def run(self) -> None:
        """Prune now and then every interval, until `stop()`; a failed pass is logged and tried next time."""
        while not self._stopping.is_set():
            try:
                await self.prune_once()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, DATABASE_ERRORS) else logging.ERROR
                log.log(
                    level,
                    "retention pass failed (%s: %s); next in %.0fs",
                    type(exc).__name__,
                    exc,
                    self._policy.interval_seconds,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=self._policy.interval_seconds)

    async def stop(self) -> None:
        self._stopping.set()
