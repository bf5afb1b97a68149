"""Leases and keys: fenced writes, a lease check before each step, keys that wake their waiters."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from pao_orchestrator.errors import InvalidArgument
from tests.engine.support import create, engine_on, wait_run


def calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_a_released_concurrency_key_wakes_the_next_waiting_run_at_once(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, worker_concurrency=4) as engine:
        task_id = await create(
            engine, [{"id": "s", "uses": "pao.sleep", "with": {"seconds": 0.3}}], concurrency_key="mailbox-one"
        )
        run_ids = [(await engine.run_now(engine.owner, task_id)).id for _ in range(20)]
        runs = [await wait_run(engine, run_id, timeout=90) for run_id in run_ids]
    assert {r.status for r in runs} == {"succeeded"}
    spans = sorted((r.started_at, r.finished_at) for r in runs if r.started_at and r.finished_at)
    # Never two at once...
    assert all(earlier[1] <= later[0] for earlier, later in itertools.pairwise(spans))
    # ...and one after the other without waiting for a poll: 20 x 0.3 s is 6 s of work.
    makespan = (spans[-1][1] - spans[0][0]).total_seconds()
    assert makespan < 10, makespan
    gaps = [(later[0] - earlier[1]).total_seconds() for earlier, later in itertools.pairwise(spans)]
    assert sorted(gaps)[len(gaps) // 2] < 0.2, gaps


async def test_schedule_searches_that_find_nothing_cost_no_lease_and_no_duplicate_call(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    async with engine_on(database_url, fx_config, tmp_path, lease_seconds=1.5) as engine:
        task_id = await create(
            engine,
            [
                {"id": "wait", "uses": "fx.sleep", "with": {"seconds": 1}},
                {"id": "count", "uses": "fx.count", "with": {"path": str(counter)}},
            ],
            max_retries=3,
        )
        run_ids = [(await engine.run_now(engine.owner, task_id)).id for _ in range(8)]

        async def preview() -> str:
            try:
                await engine.preview_schedule(
                    "rrule", "FREQ=MINUTELY;INTERVAL=10080;BYDAY=TU", "UTC", count=5, after="2026-03-02T00:00:00Z"
                )
            except InvalidArgument as exc:
                return str(exc)
            return "no error"

        answers = await asyncio.gather(*(preview() for _ in range(5)))
        runs = [await wait_run(engine, run_id, timeout=60) for run_id in run_ids]
    assert all("has no fire within 10 years after" in a for a in answers), answers
    assert [(r.status, r.attempt) for r in runs] == [("succeeded", 1)] * 8
    assert calls(counter) == 8


async def test_a_worker_that_lost_its_lease_writes_nothing_more_and_calls_nothing_more(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [
                {"id": "wait", "uses": "fx.sleep", "with": {"seconds": 1}},
                {"id": "count", "uses": "fx.count", "with": {"path": str(counter)}},
            ],
        )
        run_id = (await engine.run_now(engine.owner, task_id)).id
        async with asyncio.timeout(30):
            while not any(s.status == "running" for s in (await engine.get_run(engine.owner, run_id)).steps):
                await asyncio.sleep(0.02)
        async with engine.db.acquire() as conn:
            # Another worker takes the run over while 'wait' is in flight (as after a lost lease).
            await conn.execute("UPDATE runs SET lease_owner = 'another-worker' WHERE id = $1", run_id)
            before = await conn.fetch("SELECT * FROM run_steps WHERE run_id = $1", run_id)
        async with asyncio.timeout(30):
            while engine.worker is not None and run_id in engine.worker.active_runs:
                await asyncio.sleep(0.05)
        async with engine.db.acquire() as conn:
            after = await conn.fetch("SELECT * FROM run_steps WHERE run_id = $1", run_id)
    # The end of 'wait' was not written over the new holder's record, and 'count' was never called.
    assert [dict(r) for r in after] == [dict(r) for r in before]
    assert [r["status"] for r in after] == ["running"]
    assert calls(counter) == 0
