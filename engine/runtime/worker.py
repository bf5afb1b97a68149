"""A worker: claims due runs from Postgres and executes them, holding a lease on each.

Workers coordinate only through the database: the claim is one
`FOR UPDATE SKIP LOCKED` statement, leases are renewed by a heartbeat, and a
run whose worker died is re-queued once its lease expires. A NOTIFY wakes the
worker when a run is enqueued; a short poll covers runs that become due later
(backoff) and lost notifications.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from datetime import UTC, datetime
from uuid import UUID

import asyncpg

from pao_orchestrator import logs
from pao_orchestrator.contracts import CANCEL_CHANNEL, RUNS_CHANNEL
from pao_orchestrator.engine.runtime.executor import Executor, RunHandle, lease_clock
from pao_orchestrator.engine.runtime.failures import after_failure
from pao_orchestrator.metrics import Metrics
from pao_orchestrator.store import DATABASE_ERRORS, Listener
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.vocabulary import Outcome, RunStatus

log = logging.getLogger(__name__)


def worker_name() -> str:
    """host:pid:random, unique per process start, readable in `runs.lease_owner`."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    """Claims and executes runs, up to `concurrency` at a time."""

    def __init__(
        self,
        db: asyncpg.Pool,
        executor: Executor,
        *,
        name: str,
        concurrency: int,
        lease_seconds: float,
        dsn: str,
        poll_interval: float = 1.0,
        metrics: Metrics | None = None,
    ) -> None:
        self.name = name
        self._metrics = metrics or Metrics()
        self._db = db
        self._executor = executor
        self._concurrency = concurrency
        self._lease = lease_seconds
        self._poll = poll_interval
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        self._slot_free = asyncio.Event()
        self._active: dict[UUID, tuple[RunHandle, asyncio.Task[Outcome]]] = {}
        self._listener = Listener(dsn, [RUNS_CHANNEL, CANCEL_CHANNEL], self._on_notify, wake=self._wake.set)
        self._next_sweep = 0.0

    @property
    def active_runs(self) -> list[UUID]:
        return list(self._active)

    async def run(self) -> None:
        """Claim and execute until `stop()` is called."""
        heartbeat = asyncio.create_task(self._heartbeat(), name=f"{self.name}-heartbeat")
        try:
            while not self._stopping.is_set():
                await self._listener.ensure()
                await self._requeue_expired()
                claimed = await self._claim_once()
                if claimed:
                    continue
                await self._sleep()
        finally:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
            await self._listener.close()

    async def stop(self, grace_seconds: float = 10.0) -> None:
        """Stop claiming; let running runs finish within the grace period; release the rest."""
        self._stopping.set()
        self._wake.set()
        tasks = {task: run_id for run_id, (_, task) in self._active.items()}
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=grace_seconds)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=5)
            left = [tasks[task] for task in pending]
            async with self._db.acquire() as conn:
                released = await run_store.release(conn, self.name, left)
            log.info("released %d run(s) still running after the %.1fs grace period", len(released), grace_seconds)

    async def _claim_once(self) -> bool:
        # A run whose pipeline is done and whose record is being committed no longer takes a slot.
        free = self._concurrency - sum(1 for handle, _ in self._active.values() if not handle.executed.is_set())
        if free <= 0:
            self._slot_free.clear()
            await self._wait(self._slot_free)
            return True
        asked = lease_clock()
        try:
            async with self._db.acquire() as conn:
                with self._metrics.claim_latency.time():
                    rows = await run_store.claim(conn, self.name, free, self._lease)
        except DATABASE_ERRORS as exc:
            log.warning("claim failed (%s); retrying", exc)
            await asyncio.sleep(min(self._poll, 1.0))
            return False
        claimed_at = datetime.now(UTC)
        for row in rows:
            if row.attempt == 1:
                lateness = (claimed_at - row.scheduled_for).total_seconds()
                self._metrics.fired(row.trigger.value, max(lateness, 0.0))
            handle = RunHandle(row, lease_seconds=self._lease, held_until=asked + self._lease)
            if row.cancel_requested:
                handle.cancel.set()
            handle.on_executed = self._slot_free.set
            task = asyncio.create_task(self._execute(handle), name=f"run-{row.id}")
            self._active[row.id] = (handle, task)
        # A full claim means more may be waiting: claim again without sleeping.
        return len(rows) == free

    async def _execute(self, handle: RunHandle) -> Outcome:
        run = handle.run
        run_id = run.id
        try:
            with logs.bind(run_id=run_id, task_id=run.task_id, attempt=run.attempt):
                return await self._executor.execute(handle)
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a step failure: keep the worker alive; the lease expiry re-queues the run.
            log.exception("run %s crashed the executor", run_id)
            return Outcome.CRASHED
        finally:
            self._active.pop(run_id, None)
            self._slot_free.set()

    async def _sleep(self) -> None:
        """Idle until a NOTIFY, the next queued run's instant (runs created ahead), or the poll interval."""
        timeout = self._poll
        try:
            async with self._db.acquire() as conn:
                due_in = await run_store.next_due_in(conn)
        except DATABASE_ERRORS:
            due_in = None
        # due_in <= 0: runs are due but the claim passed over them (their keys are held); poll.
        if due_in is not None and 0 < due_in < timeout:
            timeout = due_in
        await self._wait(self._wake, timeout=timeout)
        self._wake.clear()

    async def _wait(self, event: asyncio.Event, timeout: float | None = None) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        ev = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait({stop, ev}, timeout=timeout or self._poll, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            ev.cancel()

    async def _requeue_expired(self) -> None:
        # Leases expire on a scale of seconds: sweeping a few times per lease is enough.
        now = asyncio.get_running_loop().time()
        if now < self._next_sweep:
            return
        self._next_sweep = now + min(self._lease / 3, 5.0)
        try:
            async with self._db.acquire() as conn:
                rows = await run_store.requeue_expired(conn)
        except DATABASE_ERRORS as exc:
            log.warning("lease sweep failed: %s", exc)
            return
        for reaped in rows:
            then = "queued to run its on_failure steps" if reaped.owes_on_failure else reaped.status.value
            log.warning("run %s: lease expired; now %s", reaped.id, then)
        # A run failed for good here counts toward pause_after_failures as any failure does.
        for task_id in {r.task_id for r in rows if r.status == RunStatus.FAILED}:
            await after_failure(self._db, task_id)

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            held = list(self._active)
            if not held:
                continue
            asked = lease_clock()
            try:
                async with self._db.acquire() as conn:
                    still = await run_store.renew_leases(conn, self.name, held, self._lease)
            except Exception as exc:
                # The heartbeat must outlive a database restart: a dead heartbeat loses every lease.
                level = logging.WARNING if isinstance(exc, DATABASE_ERRORS) else logging.ERROR
                log.log(level, "lease renewal failed (%s: %s); retrying", type(exc).__name__, exc)
                continue
            for run_id, cancel in still.items():
                entry = self._active.get(run_id)
                if entry is None:
                    continue
                entry[0].held_until = asked + self._lease
                if cancel:
                    entry[0].cancel.set()

    def _on_notify(self, channel: str, payload: str) -> None:
        if channel == CANCEL_CHANNEL:
            with contextlib.suppress(ValueError):
                entry = self._active.get(UUID(payload))
                if entry is not None:
                    entry[0].cancel.set()
            return
        self._wake.set()
