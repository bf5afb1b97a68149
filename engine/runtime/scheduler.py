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
from pao_orchestrator.engine.runtime import fires
from pao_orchestrator.engine.runtime.enqueuing import enqueue, key_context, render_key, serial_key
from pao_orchestrator.engine.schedule import parse_schedule
from pao_orchestrator.errors import PaoError
from pao_orchestrator.store import DATABASE_ERRORS, DueTask, InsertedRun, Listener, RunBatch, RunRecord, TaskAdvance
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import OverlapPolicy, RunStatus, TaskStatus, Trigger

log = logging.getLogger(__name__)
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
    ) -> None:
        self._db = db
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

    async def run(self) -> None:
        """Pass, sleep until the next due instant or a change, repeat; survive any database outage."""
        backoff = 0.5
        try:
            while not self._stopping.is_set():
                try:
                    if self._listener is not None:
                        await self._listener.ensure()
                    delay = await self._cycle()
                    backoff = 0.5
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # The scheduler must outlive Postgres restarts and its own bugs: log, back off, retry.
                    level = logging.WARNING if isinstance(exc, DATABASE_ERRORS) else logging.ERROR
                    log.log(level, "scheduler pass failed (%s: %s); retry in %.1fs", type(exc).__name__, exc, backoff)
                    if self._listener is not None:
                        await self._listener.close()
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
        async with self._db.acquire() as conn, conn.transaction():
            tasks = await task_store.claim_due(conn, now=now_arg, lookahead_seconds=self._lookahead, limit=self._batch)
            result.tasks = len(tasks)
            if tasks:
                await self._decide(conn, tasks, result)
            result.next_due, result.clock = await task_store.next_due(conn)
        self.passes += 1
        return result

    async def _decide(self, conn: asyncpg.Connection, tasks: list[DueTask], result: PassResult) -> None:
        now = tasks[0].now
        horizon = now + timedelta(seconds=self._lookahead)
        batch = RunBatch()
        advance = TaskAdvance()
        cancels: tuple[list[UUID], list[str]] = ([], [])
        # Identical schedules due at the same instant share one decision: 1,000 tasks with one
        # cron expression cost one schedule walk, not 1,000.
        plans: dict[tuple[Any, ...], fires.Plan] = {}
        one_by_one: list[tuple[DueTask, fires.Plan]] = []
        for task in tasks:
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
                self._broken(task, exc, batch, advance)
                continue
            status = TaskStatus.ACTIVE if plan.next_fire_at is not None else TaskStatus.COMPLETED
            last = plan.runs[-1][0] if plan.runs else None
            advance.add(task.id, plan.next_fire_at, status, last, plan.snooze_over)
            for instant, reason in plan.skipped:
                batch.add(task.id, RunStatus.SKIPPED, instant, priority=task.priority, max_attempts=1, reason=reason)
            if not plan.runs:
                continue
            if task.active_ids and self._overlap(task, plan, batch, cancels, schedule.tz):
                continue
            if task.dedupe_key is not None:
                one_by_one.append((task, plan))
                continue
            for instant, catch_up in plan.runs:
                batch.add(
                    task.id,
                    RunStatus.QUEUED,
                    instant,
                    priority=task.priority,
                    max_attempts=task.max_retries + 1,
                    concurrency_key=_concurrency_key(task, instant),
                    catch_up=catch_up,
                )
        await run_store.cancel_many(conn, *cancels)
        inserted: list[InsertedRun | RunRecord] = list(await run_store.insert_batch(conn, batch))
        for task, plan in one_by_one:
            inserted.extend(await _enqueue_deduped(conn, task, plan))
        await task_store.advance(conn, advance)
        for row in inserted:
            if row.status == RunStatus.QUEUED:
                result.queued += 1
                if row.scheduled_for > now:
                    result.ahead.append(row.scheduled_for)
            else:
                result.skipped += 1

    @staticmethod
    def _overlap(
        task: DueTask,
        plan: fires.Plan,
        batch: RunBatch,
        cancels: tuple[list[UUID], list[str]],
        tz: Any,
    ) -> bool:
        """Apply overlap_policy against runs still active; True when the fires were skipped instead."""
        policy = task.overlap_policy
        assert task.active_ids
        previous = task.active_ids[0]
        if policy == OverlapPolicy.SKIP:
            state = RunStatus.RUNNING if task.active_running else RunStatus.QUEUED
            reason = f"previous run {previous} still {state} (overlap_policy=skip)"
            for instant, _ in plan.runs:
                batch.add(task.id, RunStatus.SKIPPED, instant, priority=task.priority, max_attempts=1, reason=reason)
            return True
        if policy == OverlapPolicy.CANCEL_PREVIOUS:
            first = fires.when(plan.runs[0][0], tz)
            for run_id in task.active_ids:
                cancels[0].append(run_id)
                cancels[1].append(f"superseded by the run for {first} (overlap_policy=cancel_previous)")
        # queue: the new run waits for the previous one (same concurrency key); allow: both run.
        return False

    @staticmethod
    def _broken(task: DueTask, exc: Exception, batch: RunBatch, advance: TaskAdvance) -> None:
        """A stored schedule that no longer evaluates (e.g. a zone gone from tzdata) pauses its task,
        with the reason on record, instead of failing every pass."""
        if not isinstance(exc, PaoError):
            log.exception("task %s: deciding its fires failed", task.id, exc_info=exc)
        reason = f"schedule could not be evaluated ({exc}); the task was paused: fix it with update_task"
        batch.add(task.id, RunStatus.SKIPPED, task.next_fire_at, priority=task.priority, max_attempts=1, reason=reason)
        advance.add(task.id, task.next_fire_at, TaskStatus.PAUSED, None, False)

    def _on_notify(self, _channel: str, _payload: str) -> None:
        self._wake.set()


def _concurrency_key(task: DueTask, instant: datetime) -> str | None:
    if task.concurrency_key is None:
        return serial_key(task.id, task.overlap_policy)
    return render_key(task.concurrency_key, key_context(task, Trigger.SCHEDULE, {}, instant))


async def _enqueue_deduped(conn: asyncpg.Connection, task: DueTask, plan: fires.Plan) -> list[RunRecord]:
    """Tasks with a dedupe_key go through `enqueue` (it applies the dedupe rule), one fire each."""
    rows = []
    for instant, catch_up in plan.runs:
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
                        default_concurrency_key=serial_key(task.id, task.overlap_policy),
                    )
                )
        except asyncpg.UniqueViolationError:
            continue
    return rows
