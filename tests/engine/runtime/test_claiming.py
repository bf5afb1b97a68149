"""Claiming under contention: priority order, concurrency keys across workers, dedupe."""

from __future__ import annotations

import asyncio
import itertools
import random
from datetime import datetime, timedelta
from pathlib import Path
from uuid import UUID

from pao_orchestrator.engine import Engine, Run
from pao_orchestrator.engine.runtime import Executor, Worker
from tests.engine.support import create, engine_on, wait_run


def worker_on(engine: Engine, dsn: str, name: str, *, concurrency: int, poll_interval: float = 1.0) -> Worker:
    """A worker of our own on the engine's database, started and stopped by the test."""
    executor = Executor(engine.db, engine.tools, worker=name, secrets={})
    return Worker(
        engine.db, executor, name=name, concurrency=concurrency, lease_seconds=5, dsn=dsn, poll_interval=poll_interval
    )


async def test_busy_workers_claim_in_priority_order_then_by_due_time(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        by_priority = {
            p: await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}], priority=p) for p in (1, 5, 9)
        }
        enqueued: list[tuple[int, UUID]] = []
        order = [1, 5, 9] * 4
        random.Random(7).shuffle(order)
        for p in order:
            enqueued.append((p, (await engine.run_now(engine.owner, by_priority[p])).id))
        # One slot: every claim picks exactly one run out of the whole backlog.
        worker = worker_on(engine, database_url, "w1", concurrency=1)
        running = asyncio.create_task(worker.run())
        try:
            finished = [await wait_run(engine, run_id) for _, run_id in enqueued]
        finally:
            await worker.stop()
            await running
    started = sorted(finished, key=lambda r: r.started_at)  # type: ignore[arg-type, return-value]
    expected = sorted(enqueued, key=lambda pr: (pr[0], [e[1] for e in enqueued].index(pr[1])))
    assert [r.id for r in started] == [run_id for _, run_id in expected]


async def test_equal_concurrency_keys_never_run_at_once_across_workers(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        keyed = await create(
            engine,
            [{"id": "s", "uses": "pao.sleep", "with": {"seconds": 0.05}}],
            concurrency_key="mailbox-${task.title}",
        )
        free = await create(engine, [{"id": "s", "uses": "pao.sleep", "with": {"seconds": 0.05}}], title="free")
        run_ids = [(await engine.run_now(engine.owner, keyed)).id for _ in range(12)]
        run_ids += [(await engine.run_now(engine.owner, free)).id for _ in range(12)]
        workers = [worker_on(engine, database_url, f"w{i}", concurrency=4, poll_interval=0.05) for i in range(3)]
        tasks = [asyncio.create_task(w.run()) for w in workers]
        try:
            runs = [await wait_run(engine, run_id, timeout=60) for run_id in run_ids]
        finally:
            for w in workers:
                await w.stop()
            await asyncio.gather(*tasks)
    assert {r.status for r in runs} == {"succeeded"}
    keyed_runs = [r for r in runs if r.concurrency_key is not None]
    assert {r.concurrency_key for r in keyed_runs} == {"mailbox-test task"}

    # When each run really executed: its step's own start and duration, taken by the worker around the
    # call (runs.started_at is the claim statement's start, which may precede the previous run's end
    # while that statement waits its turn).
    def executing(run: Run) -> tuple[datetime, datetime]:
        step = run.steps[0]
        assert step.duration_ms is not None
        return step.started_at, step.started_at + timedelta(milliseconds=step.duration_ms)

    keyed = sorted(executing(r) for r in keyed_runs)
    for (_, end), (start, _) in itertools.pairwise(keyed):
        assert start >= end, f"two runs with one concurrency key overlapped: {keyed}"
    unkeyed = sorted(executing(r) for r in runs if r.concurrency_key is None)
    overlapping = sum(1 for (_, e), (s, _) in itertools.pairwise(unkeyed) if s < e)
    assert overlapping > 0, "runs without a key should run in parallel"


async def test_dedupe_key_suppresses_duplicates_inside_the_window(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(
            engine,
            [{"id": "a", "uses": "pao.noop", "with": {}}],
            dedupe_key="daily-${task.id}",
            dedupe_window_seconds=3600,
        )
        first = await engine.run_now(engine.owner, task_id)
        second = await engine.run_now(engine.owner, task_id)
        async with engine.db.acquire() as conn:
            # Move the first run outside the window (time passes in SQL).
            await conn.execute("UPDATE runs SET created_at = now() - interval '2 hours' WHERE id = $1", first.id)
        third = await engine.run_now(engine.owner, task_id)
    assert first.status == "queued"
    assert second.status == "skipped"
    assert second.deduped_of == first.id
    assert f"deduplicated: run {first.id}" in (second.reason or "")
    assert third.status == "queued"


async def test_dedupe_window_zero_suppresses_only_while_the_original_is_active(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(engine, [{"id": "s", "uses": "pao.sleep", "with": {"seconds": 0.3}}], dedupe_key="k")
        first = await engine.run_now(engine.owner, task_id)
        while_active = await engine.run_now(engine.owner, task_id)
        await wait_run(engine, first.id)
        after = await engine.run_now(engine.owner, task_id)
        await wait_run(engine, after.id)
    assert while_active.status == "skipped" and while_active.deduped_of == first.id
    assert after.status == "queued"


async def test_concurrent_enqueues_with_one_dedupe_key_make_one_run(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(
            engine, [{"id": "a", "uses": "pao.noop", "with": {}}], dedupe_key="k", dedupe_window_seconds=60
        )
        runs = await asyncio.gather(*(engine.run_now(engine.owner, task_id) for _ in range(8)))
    assert sorted(r.status for r in runs) == ["queued"] + ["skipped"] * 7


async def test_an_idle_worker_wakes_for_the_next_queued_instant_without_a_notify(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}])
        # A poll would come far too late: only the worker's own timer can start the run on time.
        worker = worker_on(engine, database_url, "w1", concurrency=1, poll_interval=30)
        running = asyncio.create_task(worker.run())
        try:
            await asyncio.sleep(0.2)  # the worker is idle, sleeping
            async with engine.db.acquire() as conn:
                # Created ahead of its instant, as the scheduler does, and without waking anyone.
                run_id = await conn.fetchval(
                    "INSERT INTO runs (task_id, trigger, available_at, scheduled_for)"
                    " VALUES ($1, 'manual', now() + interval '0.5 s', now() + interval '0.5 s') RETURNING id",
                    task_id,
                )
            # The insert did not notify, and the worker went to sleep before it: poke it once so that
            # it looks again and learns the instant, as the scheduler's NOTIFY on creation does.
            async with engine.db.acquire() as conn:
                await conn.execute("SELECT pg_notify('pao_runs', '')")
            run = await wait_run(engine, run_id, timeout=10)
        finally:
            await worker.stop()
            await running
    assert run.status == "succeeded"
    assert run.started_at is not None
    late = (run.started_at - run.scheduled_for).total_seconds()
    # Never before its instant, and long before the 30 s poll: the worker's own timer started it.
    # (How late a timer wake-up is, is measured by bench/lateness.py against a peer, not asserted here:
    # a wall-clock bound fails whenever the machine is busy.)
    assert 0 <= late < 5, late
