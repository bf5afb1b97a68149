"""The `runs` table: enqueueing, claiming, leases, completion and cancelling (statements in runs.sql).

Every write a worker makes about a run it holds is fenced on `lease_owner`: a
worker that lost its lease (it stalled, another worker took the run over) can
no longer change the run.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.errors import NotFound
from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record
from pao_orchestrator.store.steps import AbandonedStep, StepRecord, abandon
from pao_orchestrator.vocabulary import BackoffStrategy, RunStatus, Trigger


@dataclass(frozen=True)
class RunRecord(Record):
    """A row of `runs`."""

    id: UUID
    task_id: UUID
    status: RunStatus
    trigger: Trigger
    trigger_data: dict[str, Any]
    scheduled_for: datetime
    priority: int
    concurrency_key: str | None
    dedupe_key: str | None
    deduped_of: UUID | None
    attempt: int
    max_attempts: int
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    reason: str | None
    outputs: dict[str, Any] | None
    created_by: UUID | None
    created_at: datetime


@dataclass(frozen=True)
class ClaimedRun(Record):
    """A run a worker has just claimed, with what executing it needs from its task (one round trip)."""

    id: UUID
    task_id: UUID
    attempt: int
    max_attempts: int
    trigger: Trigger
    trigger_data: dict[str, Any]
    scheduled_for: datetime
    cancel_requested: bool
    resume: bool  # it ran before (a retry, a takeover, a release): finished steps are reused
    failing: str | None  # its last attempt died with its worker: run only on_failure, with this error
    task_payload: dict[str, Any]
    task_updated_at: datetime
    task_title: str
    backoff_strategy: BackoffStrategy
    backoff_base_seconds: float
    backoff_max_seconds: float


@dataclass(frozen=True)
class NewRun:
    """A run to insert for one task (run_now, an event, a deduplicated scheduled fire)."""

    task_id: UUID
    status: RunStatus
    trigger: Trigger
    trigger_data: dict[str, Any]
    scheduled_for: datetime
    priority: int
    concurrency_key: str | None
    dedupe_key: str | None
    deduped_of: UUID | None
    max_attempts: int
    available_at: datetime
    reason: str | None
    created_by: UUID | None
    event_id: int | None = None


@dataclass
class RunBatch:
    """Columns of the rows one scheduler pass inserts into `runs` (one entry per fire)."""

    task_id: list[UUID] = field(default_factory=list)
    status: list[RunStatus] = field(default_factory=list)
    scheduled_for: list[datetime] = field(default_factory=list)
    priority: list[int] = field(default_factory=list)
    max_attempts: list[int] = field(default_factory=list)
    reason: list[str | None] = field(default_factory=list)
    concurrency_key: list[str | None] = field(default_factory=list)
    catch_up: list[bool] = field(default_factory=list)
    error: list[str | None] = field(default_factory=list)

    def add(
        self,
        task_id: UUID,
        status: RunStatus,
        scheduled_for: datetime,
        *,
        priority: int,
        max_attempts: int,
        reason: str | None = None,
        concurrency_key: str | None = None,
        catch_up: bool = False,
        error: str | None = None,
    ) -> None:
        self.task_id.append(task_id)
        self.status.append(status)
        self.scheduled_for.append(scheduled_for)
        self.priority.append(priority)
        self.max_attempts.append(max_attempts)
        self.reason.append(reason)
        self.concurrency_key.append(concurrency_key)
        self.catch_up.append(catch_up)
        self.error.append(error)

    def __len__(self) -> int:
        return len(self.task_id)


@dataclass(frozen=True)
class InsertedRun(Record):
    """What a scheduler pass learns of each row it inserted."""

    id: UUID
    task_id: UUID
    status: RunStatus
    scheduled_for: datetime


@dataclass(frozen=True)
class Completion:
    """The end of a run, with the record of the step that ended it (if that step is not yet written)."""

    run_id: UUID
    status: RunStatus
    error: str | None
    outputs: dict[str, Any] | None
    reason: str | None = None
    step: StepRecord | None = None


# --------------------------------------------------------------------------- enqueueing


async def insert(conn: asyncpg.Connection, run: NewRun) -> RunRecord:
    """Insert one run; a queued one wakes the workers on commit."""
    row = await conn.fetchrow(
        sql("insert_run"),
        run.task_id,
        run.status,
        run.trigger,
        run.trigger_data,
        run.scheduled_for,
        run.priority,
        run.concurrency_key,
        run.dedupe_key,
        run.deduped_of,
        run.max_attempts,
        run.available_at,
        run.reason,
        run.created_by,
        run.event_id,
    )
    return RunRecord.from_row(row)


async def find_duplicate(conn: asyncpg.Connection, task_id: UUID, dedupe_key: str, window_seconds: int) -> UUID | None:
    value = await conn.fetchval(sql("find_duplicate_run"), task_id, dedupe_key, window_seconds)
    return value  # type: ignore[no-any-return]


async def lock_dedupe_key(conn: asyncpg.Connection, task_id: UUID, dedupe_key: str) -> None:
    """Serialise enqueues of one (task, key) until the transaction ends, so two triggers cannot both pass."""
    await conn.execute(sql("lock_dedupe_key"), f"{task_id}:{dedupe_key}")


async def insert_batch(conn: asyncpg.Connection, batch: RunBatch) -> list[InsertedRun]:
    """Insert a pass's fires; returns the rows actually inserted (a fire that already has a row is left alone)."""
    if not batch:
        return []
    rows = await conn.fetch(
        sql("insert_schedule_runs"),
        batch.task_id,
        batch.status,
        batch.scheduled_for,
        batch.priority,
        batch.max_attempts,
        batch.reason,
        batch.concurrency_key,
        batch.catch_up,
        batch.error,
    )
    return [InsertedRun.from_row(r) for r in rows]


async def wake_workers_at(conn: asyncpg.Connection, instant: datetime) -> tuple[bool, datetime]:
    """NOTIFY the workers if the database clock has reached `instant`; (notified, database clock)."""
    row = await conn.fetchrow(sql("wake_workers_at"), instant)
    return row["notified"], row["now"]


# --------------------------------------------------------------------------- reading


async def get(conn: asyncpg.Connection, run_id: UUID) -> RunRecord:
    row = await conn.fetchrow(sql("get_run"), run_id)
    if row is None:
        raise NotFound(f"run {run_id} does not exist; list_runs shows recent runs")
    return RunRecord.from_row(row)


async def list_page(
    conn: asyncpg.Connection,
    *,
    task_id: UUID | None,
    status: RunStatus | None,
    before: tuple[datetime, UUID] | None,
    limit: int,
    created_by: UUID | None = None,
) -> list[RunRecord]:
    """A page of runs, newest first; only of `created_by`'s tasks when given."""
    rows = await conn.fetch(
        sql("list_runs"),
        task_id,
        status,
        before[0] if before else None,
        before[1] if before else None,
        limit,
        created_by,
    )
    return [RunRecord.from_row(r) for r in rows]


async def owner(conn: asyncpg.Connection, run_id: UUID) -> UUID | None:
    """The agent that created the run's task; None when there is no such run."""
    found: UUID | None = await conn.fetchval(sql("run_owner"), run_id)
    return found


async def active_of_task(conn: asyncpg.Connection, task_id: UUID) -> list[tuple[UUID, RunStatus]]:
    """The task's queued and running runs, oldest first."""
    return [(r["id"], RunStatus(r["status"])) for r in await conn.fetch(sql("active_runs_of_task"), task_id)]


async def queue_stats(conn: asyncpg.Connection) -> tuple[int, int]:
    """(runs due and waiting for a worker, runs executing)."""
    row = await conn.fetchrow(sql("queue_stats"))
    return row["queued_due"], row["running"]


# --------------------------------------------------------------------------- workers


async def claim(conn: asyncpg.Connection, worker: str, limit: int, lease_seconds: float) -> list[ClaimedRun]:
    """Claim up to `limit` due runs; a concurrency-key race with another worker yields an empty claim."""
    try:
        rows = await conn.fetch(sql("claim_runs"), worker, limit, lease_seconds)
    except asyncpg.UniqueViolationError:
        # Another worker took a run with the same concurrency key after our snapshot; the
        # next claim sees it running and passes over that key.
        return []
    return [ClaimedRun.from_row(r) for r in rows]


async def next_due_in(conn: asyncpg.Connection) -> float | None:
    """Seconds (by the database clock) until the earliest queued run becomes claimable; None if none is queued."""
    value = await conn.fetchval(sql("next_queued_due_in"))
    return None if value is None else float(value)


async def renew_leases(
    conn: asyncpg.Connection, worker: str, run_ids: list[UUID], lease_seconds: float
) -> dict[UUID, bool]:
    """Extend the leases; map each run still held to whether cancellation was requested."""
    rows = await conn.fetch(sql("renew_leases"), worker, run_ids, lease_seconds)
    return {r["id"]: r["cancel_requested"] for r in rows}


async def renew_lease(conn: asyncpg.Connection, run_id: UUID, worker: str, lease_seconds: float) -> bool | None:
    """Extend one lease, waiting for a concurrent heartbeat; None when `worker` no longer holds the run,
    else whether cancellation was requested."""
    value = await conn.fetchval(sql("renew_lease"), run_id, worker, lease_seconds)
    return value  # type: ignore[no-any-return]


@dataclass(frozen=True)
class Reaped:
    """A run whose worker stopped heartbeating, as the sweep left it: re-queued, queued to run its
    on_failure steps (`owes_on_failure`), or failed."""

    id: UUID
    task_id: UUID
    status: RunStatus
    owes_on_failure: bool


async def requeue_expired(conn: asyncpg.Connection) -> list[Reaped]:
    """Re-queue (or fail, past max_attempts) the runs whose worker stopped heartbeating, and close the
    steps their dead attempts left running (`abandoned`, saying why)."""
    async with conn.transaction():
        rows = await conn.fetch(sql("requeue_expired_leases"))
        abandoned = []
        for r in rows:
            if r["owes_on_failure"]:
                then = "no attempts were left, so the run is queued to run its on_failure steps and then fails"
            elif r["status"] == RunStatus.QUEUED:
                then = f"the run was re-queued as attempt {r['attempt']}"
            else:
                then = "no attempts were left, so the run failed"
            reason = (
                f"worker {r['dead_worker'] or '?'} stopped heartbeating (its lease expired) while this step ran; {then}"
            )
            abandoned.append(AbandonedStep(r["id"], r["dead_attempt"], reason))
        await abandon(conn, abandoned)
    return [Reaped(r["id"], r["task_id"], RunStatus(r["status"]), r["owes_on_failure"]) for r in rows]


async def release(conn: asyncpg.Connection, worker: str, run_ids: list[UUID]) -> list[UUID]:
    """Graceful shutdown: give runs back without spending an attempt; the steps they were running
    are closed as abandoned (they run again, in the same attempt, when the run is claimed)."""
    async with conn.transaction():
        rows = await conn.fetch(sql("release_runs"), worker, run_ids)
        reason = f"worker {worker} stopped (shutdown) while this step ran; the run was released to run it again"
        await abandon(conn, [AbandonedStep(r["id"], r["attempt"], reason) for r in rows])
    return [r["id"] for r in rows]


async def finish_many(conn: asyncpg.Connection, worker: str, items: Sequence[Completion]) -> set[UUID]:
    """Record the end of every run in `items`; return the ids `worker` still held the lease of."""
    records = [c.step for c in items]
    rows = await conn.fetch(
        sql("finish_runs"),
        [c.run_id for c in items],
        worker,
        [c.status for c in items],
        [c.error for c in items],
        [c.outputs for c in items],
        [c.reason for c in items],
        [s.attempt if s else None for s in records],
        [s.step_index if s else None for s in records],
        [s.step_id if s else None for s in records],
        [s.uses if s else None for s in records],
        [s.status if s else None for s in records],
        [s.input if s else None for s in records],
        [s.output if s else None for s in records],
        [s.error if s else None for s in records],
        [s.started_at if s else None for s in records],
        [s.duration_ms if s else None for s in records],
        [s.output_sealed if s else None for s in records],
    )
    return {r["id"] for r in rows}


async def retry(
    conn: asyncpg.Connection, run_id: UUID, worker: str, *, error: str, reason: str, delay_seconds: float
) -> bool:
    """Back to the queue as the next attempt after `delay_seconds`; False when the lease was lost."""
    return await conn.fetchval(sql("retry_run"), run_id, worker, error, reason, delay_seconds) is not None


# --------------------------------------------------------------------------- cancelling


async def cancel(conn: asyncpg.Connection, run_id: UUID, reason: str) -> RunRecord:
    """Cancel a queued run at once, or ask the worker of a running one to stop it (the step in flight too).

    Returns the run as it now stands; a finished run is returned unchanged.
    """
    row = await conn.fetchrow(sql("cancel_queued_run"), run_id, reason)
    if row is None:
        row = await conn.fetchrow(sql("request_run_cancel"), run_id, reason)
    if row is None:
        return await get(conn, run_id)
    return RunRecord.from_row(row)


async def cancel_many(
    conn: asyncpg.Connection, run_ids: Sequence[UUID], reasons: Sequence[str]
) -> dict[UUID, RunStatus]:
    """Cancel queued runs, ask running ones to stop.

    Maps each run that changed to its status now: `cancelled`, or `running` for one asked to stop
    (its worker stops the step in flight).
    """
    if not run_ids:
        return {}
    rows = await conn.fetch(sql("cancel_runs"), list(run_ids), list(reasons))
    return {r["id"]: RunStatus(r["status"]) for r in rows}


async def withdraw_reservations(conn: asyncpg.Connection, task_id: UUID, reason: str) -> list[datetime]:
    """Remove runs created ahead of their (future) instant; returns those instants."""
    return [r["scheduled_for"] for r in await conn.fetch(sql("withdraw_reservations"), task_id, reason)]


async def queue_metrics(conn: asyncpg.Connection) -> tuple[int, int, float]:
    """(queued runs that are due, running runs, seconds the oldest due run has waited)."""
    row = await conn.fetchrow(sql("queue_metrics"))
    return int(row["queued_due"]), int(row["running"]), float(row["oldest_due_age"])
