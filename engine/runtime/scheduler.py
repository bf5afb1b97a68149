"""The scheduler: turns due cron, rrule and once tasks into runs, in every serve and worker process.

State lives in Postgres: each task's `next_fire_at` is the whole schedule state.
A pass locks a batch of due tasks (`FOR UPDATE SKIP LOCKED`, so any number of
schedulers share the table without waiting on each other), decides every fire
(engine.fires: snooze and misfire policy; here: overlap policy), inserts the
runs and skipped rows in one statement and advances `next_fire_at` in another,
and commits. The unique index `runs_one_per_fire` makes a doubled fire
impossible even if two passes computed the same one.

Between passes the loop sleeps until the next due instant (read from the
database, with the database clock), or until a task is created or changed
(`LISTEN pao_tasks`). It wakes LOOKAHEAD before the instant and creates the
runs ahead, claimable from their instant (`available_at`); at the instant it
NOTIFYs the workers, so the pass's own cost does not add to a run's lateness.
Runs created ahead are reservations: pausing, snoozing, re-scheduling or
cancelling the task withdraws them (engine.lifecycle).
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.contracts import TASKS_CHANNEL
from pao_orchestrator.engine.runtime import fires, storable
from pao_orchestrator.engine.runtime.enqueuing import Keys, enqueue, render_keys, serial_key
from pao_orchestrator.engine.schedule import parse_schedule
from pao_orchestrator.errors import PaoError
from pao_orchestrator.metrics import Metrics
from pao_orchestrator.store import DATABASE_ERRORS, DueTask, InsertedRun, Listener, RunBatch, RunRecord, TaskAdvance
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import OverlapPolicy, RunStatus, TaskStatus, Trigger

log = logging.getLogger(__name__)
# What a write raises for data it cannot store (asyncpg raises ValueError and TypeError while
# encoding a value); only these make a pass retry task by task.
_WRITE_ERRORS = (*DATABASE_ERRORS, ValueError, TypeError)
# Runs are created this long before their instant and released by a NOTIFY at it.
LOOKAHEAD = 0.3
# Longest sleep between passes, so a lost notification costs at most this much.
MAX_SLEEP = 30.0
# Tasks one pass locks and decides; a full batch is followed at once by another pass.
BATCH = 1000


@dataclass
class PassResult:
    """What one pass did (for the loop, tests and benchmarks)."""

    tasks: int = 0
    queued: int = 0
    skipped: int = 0
    ahead: list[datetime] = field(default_factory=list)  # instants of runs created ahead of now
    next_due: datetime | None = None
    clock: datetime | None = None  # the database clock at the end of the pass


class Scheduler:
    """One scheduler loop; `run()` until `stop()`. `run_pass()` is one transaction, for tests."""

    def __init__(
        self,
        db: asyncpg.Pool,
        *,
        dsn: str | None = None,
        batch_size: int = BATCH,
        lookahead: float = LOOKAHEAD,
        max_sleep: float = MAX_SLEEP,
        clock: Callable[[], datetime] | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics or Metrics()
        self._dsn = dsn
        self._batch = batch_size
        self._lookahead = lookahead
        self._max_sleep = max_sleep
        self._clock = clock  # None: the database's clock (tests may pin the instant)
        self._wake = asyncio.Event()
        self._stopping = asyncio.Event()
        # Without a DSN (tests driving run_pass) there is no LISTEN: the loop polls.
        self._listener = Listener(dsn, [TASKS_CHANNEL], self._on_notify, wake=self._wake.set) if dsn else None
        self._releases: list[tuple[float, datetime]] = []  # heap of (loop deadline, instant)
        self.passes = 0
        self.failed_passes = 0

    @property
    def listener(self) -> Listener | None:
        """The LISTEN connection (for tests: it must outlive failing passes)."""
        return self._listener

    async def run(self) -> None:
        """Pass, sleep until the next due instant or a change, repeat; survive any database outage."""
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    if self._listener is not None:
                        await self._listener.ensure()
                    # What woke us is looked at now; a wake during the cycle means look again at once.
                    self._wake.clear()
                    delay = await self._cycle()
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The scheduler must outlive Postgres restarts and its own bugs: log, back off, retry.
                    # The LISTEN connection stays: re-making it would wake this loop at once (a reconnect
                    # is a reason to look), so a pass failing for good would spin instead of backing
                    # off. A connection that did die is re-made by ensure(), at most every few seconds.
                    level = logging.WARNING if isinstance(exc, DATABASE_ERRORS) else logging.ERROR
                    log.log(level, "scheduler pass failed (%s: %s); retry in %.1fs", type(exc).__name__, exc, backoff)
                    self.failed_passes += 1
                    self._metrics.scheduler_failed_passes.inc()
                    delay, backoff = backoff, min(backoff * 2, self._max_sleep)
                await self._sleep(delay)
        finally:
            if self._listener is not None:
                await self._listener.close()

    async def stop(self) -> None:
        self._stopping.set()
        self._wake.set()

    async def _cycle(self) -> float:
        """Release runs whose instant came, pass until nothing is due; seconds until the next wake."""
        await self._release_due()
        while True:
            result = await self.run_pass()
            assert result.clock is not None
            loop_now = asyncio.get_running_loop().time()
            for instant in set(result.ahead):
                heapq.heappush(self._releases, (loop_now + (instant - result.clock).total_seconds(), instant))
            if result.tasks < self._batch:
                break
        delay = self._max_sleep
        if result.next_due is not None:
            delay = (result.next_due - result.clock).total_seconds() - self._lookahead
            if delay <= 0 and result.tasks == 0:
                # Due, yet nothing could be taken: another scheduler holds those tasks right now.
                delay = 0.05
        if self._releases:
            delay = min(delay, self._releases[0][0] - loop_now)
        return max(0.0, min(delay, self._max_sleep))

    async def _release_due(self) -> None:
        """NOTIFY the workers for runs created ahead whose instant has come (one NOTIFY for all)."""
        loop = asyncio.get_running_loop()
        latest: datetime | None = None
        while self._releases and self._releases[0][0] <= loop.time():
            latest = max(latest or self._releases[0][1], heapq.heappop(self._releases)[1])
        if latest is None:
            return
        async with self._db.acquire() as conn:
            for _ in range(5):
                notified, clock = await run_store.wake_workers_at(conn, latest)
                if notified:
                    return
                # This process's clock ran ahead of the database's: wait for the database to get there.
                await asyncio.sleep((latest - clock).total_seconds() + 0.001)

    async def _sleep(self, delay: float) -> None:
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                # 2 ms late rather than early: a pass that wakes early finds nothing due yet.
                await asyncio.wait_for(self._wake.wait(), timeout=delay + 0.002)
        self._wake.clear()

    async def run_pass(self) -> PassResult:
        """Lock due tasks, decide and record their fires, advance them; one transaction."""
        result = PassResult()
        now_arg = self._clock() if self._clock is not None else None
        with self._metrics.scheduler_pass.time():
            await self._pass(now_arg, result)
        self.passes += 1
        return result

    async def _pass(self, now_arg: datetime | None, result: PassResult) -> None:
        async with self._db.acquire() as conn, conn.transaction():
            tasks = await task_store.claim_due(conn, now=now_arg, lookahead_seconds=self._lookahead, limit=self._batch)
            result.tasks = len(tasks)
            if tasks:
                await self._decide(conn, tasks, result)
            result.next_due, result.clock = await task_store.next_due(conn)

    async def _decide(self, conn: asyncpg.Connection, tasks: list[DueTask], result: PassResult) -> None:
        now = tasks[0].now
        horizon = now + timedelta(seconds=self._lookahead)
        # Identical schedules due at the same instant share one decision: 1,000 tasks with one
        # cron expression cost one schedule walk, not 1,000.
        plans: dict[tuple[Any, ...], fires.Plan] = {}
        decisions: list[_Decision] = []
        for task in tasks:
            decision = _Decision(task)
            decisions.append(decision)
            try:
                schedule = parse_schedule(task.schedule_kind, task.schedule_expr, task.timezone, anchor=task.anchor)
                key = (
                    schedule,
                    task.next_fire_at,
                    task.snoozed_until,
                    task.misfire_policy,
                    task.misfire_grace_seconds,
                )
                plan = plans.get(key)
                if plan is None:
                    plan = fires.plan(
                        schedule,
                        next_fire_at=task.next_fire_at,
                        snoozed_until=task.snoozed_until,
                        misfire_policy=task.misfire_policy,
                        grace_seconds=task.misfire_grace_seconds,
                        now=now,
                        horizon=horizon,
                    )
                    plans[key] = plan
            except Exception as exc:
                self._broken(decision, exc)
                continue
            try:
                self._decide_task(decision, plan, schedule.tz)
            except Exception as exc:
                # A bug in deciding one task must not stop the others: its fire fails, on record.
                log.exception("task %s: deciding its fires failed", task.id)
                decision.reset()
                decision.fail(task.next_fire_at, f"the scheduler could not decide this fire: {exc}")
                last = plan.runs[-1][0] if plan.runs else None
                decision.advance = (plan.next_fire_at, _status_after(plan), last, plan.snooze_over)
        try:
            async with conn.transaction():  # a savepoint: a failed write leaves the pass usable
                inserted = await self._write(conn, decisions)
        except _WRITE_ERRORS as exc:
            if conn.is_closed():
                raise
            # One task's rows broke the batch (it should not happen: keys and reasons are checked
            # before): write task by task, so only the task at fault fails.
            log.error(
                "scheduler pass: writing %d task(s) together failed (%s); writing them one by one", len(decisions), exc
            )
            inserted = []
            for decision in decisions:
                inserted.extend(await self._write_alone(conn, decision))
        for row in inserted:
            if row.status == RunStatus.QUEUED:
                result.queued += 1
                if row.scheduled_for > now:
                    result.ahead.append(row.scheduled_for)
            else:
                result.skipped += 1

    def _decide_task(self, decision: _Decision, plan: fires.Plan, tz: Any) -> None:
        task = decision.task
        last = plan.runs[-1][0] if plan.runs else None
        decision.advance = (plan.next_fire_at, _status_after(plan), last, plan.snooze_over)
        for instant, reason in plan.skipped:
            decision.add(RunStatus.SKIPPED, instant, max_attempts=1, reason=reason)
        if not plan.runs:
            return
        if task.active_ids and self._overlap(task, plan, decision, tz):
            return
        for instant, catch_up in plan.runs:
            trigger_data = {"catch_up": True} if catch_up else {}
            try:
                keys = render_keys(
                    task,
                    Trigger.SCHEDULE,
                    trigger_data,
                    instant,
                    default_concurrency_key=serial_key(task.id, task.overlap_policy),
                )
            except PaoError as exc:
                decision.fail(instant, f"the run could not be created: {exc}")
                continue
            if task.dedupe_key is not None:
                decision.deduped.append((instant, catch_up, keys))
                continue
            decision.add(
                RunStatus.QUEUED,
                instant,
                max_attempts=task.max_retries + 1,
                concurrency_key=keys.concurrency,
                catch_up=catch_up,
            )

    @staticmethod
    async def _write(conn: asyncpg.Connection, decisions: list[_Decision]) -> list[InsertedRun | RunRecord]:
        """Record the decisions: cancels, runs and skipped rows in one statement each, then advance the tasks."""
        batch = RunBatch()
        advance = TaskAdvance()
        cancels: tuple[list[UUID], list[str]] = ([], [])
        for decision in decisions:
            task_id, priority = decision.task.id, decision.task.priority
            for status, instant, max_attempts, reason, key, catch_up, error in decision.rows:
                batch.add(
                    task_id,
                    status,
                    instant,
                    priority=priority,
                    max_attempts=max_attempts,
                    reason=reason,
                    concurrency_key=key,
                    catch_up=catch_up,
                    error=error,
                )
            for run_id, reason in decision.cancels:
                cancels[0].append(run_id)
                cancels[1].append(reason)
            if decision.advance is not None:
                advance.add(decision.task.id, *decision.advance)
        await run_store.cancel_many(conn, *cancels)
        inserted: list[InsertedRun | RunRecord] = list(await run_store.insert_batch(conn, batch))
        for decision in decisions:
            inserted.extend(await _enqueue_deduped(conn, decision))
        await task_store.advance(conn, advance)
        return inserted

    async def _write_alone(self, conn: asyncpg.Connection, decision: _Decision) -> list[InsertedRun | RunRecord]:
        """One task's decision in its own savepoint; when even that fails, its fire fails on record
        (and if that cannot be written either, the task is paused)."""
        task = decision.task
        try:
            async with conn.transaction():
                return await self._write(conn, [decision])
        except _WRITE_ERRORS as exc:
            if conn.is_closed():
                raise
            log.error("task %s: recording its fires failed (%s)", task.id, exc)
            fallback = _Decision(task)
            fallback.fail(task.next_fire_at, f"the fire could not be recorded: {exc}")
            fallback.advance = decision.advance
        try:
            async with conn.transaction():
                return await self._write(conn, [fallback])
        except _WRITE_ERRORS as exc:
            if conn.is_closed():
                raise
            log.error("task %s: its fire could not be recorded either (%s); pausing it", task.id, exc)
            paused = _Decision(task)
            paused.advance = (task.next_fire_at, TaskStatus.PAUSED, None, False)
            async with conn.transaction():
                return await self._write(conn, [paused])

    @staticmethod
    def _overlap(task: DueTask, plan: fires.Plan, decision: _Decision, tz: Any) -> bool:
        """Apply overlap_policy against runs still active; True when the fires were skipped instead."""
        policy = task.overlap_policy
        assert task.active_ids
        previous = task.active_ids[0]
        if policy == OverlapPolicy.SKIP:
            state = RunStatus.RUNNING if task.active_running else RunStatus.QUEUED
            reason = f"previous run {previous} still {state} (overlap_policy=skip)"
            for instant, _ in plan.runs:
                decision.add(RunStatus.SKIPPED, instant, max_attempts=1, reason=reason)
            return True
        if policy == OverlapPolicy.CANCEL_PREVIOUS:
            first = fires.when(plan.runs[0][0], tz)
            for run_id in task.active_ids:
                decision.cancels.append((run_id, f"superseded by the run for {first} (overlap_policy=cancel_previous)"))
        # queue: the new run waits for the previous one (same concurrency key); allow: both run.
        return False

    @staticmethod
    def _broken(decision: _Decision, exc: Exception) -> None:
        """A stored schedule that no longer evaluates (e.g. a zone gone from tzdata) pauses its task,
        with the reason on record, instead of failing every pass."""
        task = decision.task
        if not isinstance(exc, PaoError):
            log.exception("task %s: deciding its fires failed", task.id, exc_info=exc)
        reason = storable.text(f"schedule could not be evaluated ({exc}); the task was paused: fix it with update_task")
        decision.add(RunStatus.SKIPPED, task.next_fire_at, max_attempts=1, reason=reason)
        decision.advance = (task.next_fire_at, TaskStatus.PAUSED, None, False)

    def _on_notify(self, _channel: str, _payload: str) -> None:
        self._wake.set()


def _status_after(plan: fires.Plan) -> TaskStatus:
    return TaskStatus.ACTIVE if plan.next_fire_at is not None else TaskStatus.COMPLETED


# A run row a pass decided: status, instant, max_attempts, reason, concurrency key, catch-up, error.
_Row = tuple[RunStatus, datetime, int, str | None, str | None, bool, str | None]


@dataclass(slots=True)
class _Decision:
    """What one pass decided for one task: rows to insert, runs to cancel, fires to enqueue through the
    dedupe rule, and the task's new state. Kept per task so a write can be retried task by task."""

    task: DueTask
    rows: list[_Row] = field(default_factory=list)
    cancels: list[tuple[UUID, str]] = field(default_factory=list)
    deduped: list[tuple[datetime, bool, Keys]] = field(default_factory=list)
    advance: tuple[datetime | None, TaskStatus, datetime | None, bool] | None = None

    def add(
        self,
        status: RunStatus,
        instant: datetime,
        *,
        max_attempts: int,
        reason: str | None = None,
        concurrency_key: str | None = None,
        catch_up: bool = False,
        error: str | None = None,
    ) -> None:
        self.rows.append((status, instant, max_attempts, reason, concurrency_key, catch_up, error))

    def fail(self, instant: datetime, error: str) -> None:
        """Record the fire at `instant` as failed: it did not become a run, and `error` says why."""
        self.add(
            RunStatus.FAILED,
            instant,
            max_attempts=1,
            reason="this fire could not become a run",
            error=storable.text(error),
        )

    def reset(self) -> None:
        self.rows, self.cancels, self.deduped, self.advance = [], [], [], None


async def _enqueue_deduped(conn: asyncpg.Connection, decision: _Decision) -> list[RunRecord]:
    """Fires of a task with a dedupe_key go through `enqueue` (it applies the dedupe rule), one each."""
    rows = []
    task = decision.task
    for instant, catch_up, keys in decision.deduped:
        try:
            async with conn.transaction():  # a savepoint: a fire that already has a row is left alone
                rows.append(
                    await enqueue(
                        conn,
                        task,
                        trigger=Trigger.SCHEDULE,
                        trigger_data={"catch_up": True} if catch_up else {},
                        scheduled_for=instant,
                        created_by=None,
                        keys=keys,
                    )
                )
        except asyncpg.UniqueViolationError:
            continue
    return rows
