"""The scheduler against a real Postgres: firing, misfire and overlap policies, snooze, DST, races.

Time is pinned: a scheduler may be given a clock, and "downtime" is made by moving
next_fire_at in SQL or the pinned clock, never by sleeping. Loops that run on real
time (the wake-up, the multi-scheduler race) use a one-second cron and wait, with a
timeout, for what they expect to happen, never for a fixed while.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.engine.runtime import Scheduler
from pao_orchestrator.store import create_pool
from tests.engine.support import new_task, runs_of, task_row


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


async def set_next(db: asyncpg.Pool, task_id: UUID, instant: datetime) -> None:
    async with db.acquire() as conn:
        await conn.execute("UPDATE tasks SET next_fire_at = $2 WHERE id = $1", task_id, instant)


def at(instant: datetime) -> Callable[[], datetime]:
    return lambda: instant


async def test_a_due_task_gets_one_run_at_its_instant_and_its_next_fire_advances(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "30 8 * * *", created=utc(2026, 11, 26, 5, 0))
    assert (await task_row(db, task_id))["next_fire_at"] == utc(2026, 11, 26, 6, 30)  # 08:30 EET

    scheduler = Scheduler(db, clock=at(utc(2026, 11, 26, 6, 30, 0, 400_000)))
    result = await scheduler.run_pass()
    assert (result.tasks, result.queued, result.skipped) == (1, 1, 0)
    [run] = await runs_of(db, task_id)
    assert (run["status"], run["trigger"], run["scheduled_for"]) == ("queued", "schedule", utc(2026, 11, 26, 6, 30))
    assert run["available_at"] == run["scheduled_for"] and run["concurrency_key"] == f"task:{task_id}"
    row = await task_row(db, task_id)
    assert row["next_fire_at"] == utc(2026, 11, 27, 6, 30) and row["last_fired_at"] == utc(2026, 11, 26, 6, 30)
    assert row["status"] == "active"

    again = await scheduler.run_pass()
    assert again.tasks == 0 and len(await runs_of(db, task_id)) == 1
    assert again.next_due == utc(2026, 11, 27, 6, 30)


async def test_runs_are_created_ahead_of_the_instant_within_the_lookahead(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "30 8 * * *", created=utc(2026, 11, 26, 5, 0))
    early = Scheduler(db, clock=at(utc(2026, 11, 26, 6, 29, 59, 500_000)), lookahead=0.3)
    assert (await early.run_pass()).tasks == 0
    ahead = Scheduler(db, clock=at(utc(2026, 11, 26, 6, 29, 59, 800_000)), lookahead=0.3)
    result = await ahead.run_pass()
    assert result.queued == 1 and result.ahead == [utc(2026, 11, 26, 6, 30)]
    [run] = await runs_of(db, task_id)
    assert run["available_at"] == utc(2026, 11, 26, 6, 30)


async def test_a_once_task_completes_after_its_fire(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "2026-12-01T08:30:00", kind="once", created=utc(2026, 11, 26))
    assert (await task_row(db, task_id))["next_fire_at"] == utc(2026, 12, 1, 6, 30)
    await Scheduler(db, clock=at(utc(2026, 12, 1, 6, 30, 1))).run_pass()
    row = await task_row(db, task_id)
    assert (row["status"], row["next_fire_at"]) == ("completed", None)
    assert [r["scheduled_for"] for r in await runs_of(db, task_id)] == [utc(2026, 12, 1, 6, 30)]


async def test_an_exhausted_rrule_count_completes_the_task(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "FREQ=DAILY;COUNT=2;BYHOUR=9;BYMINUTE=0", kind="rrule", created=utc(2026, 11, 26))
    for day in (26, 27):
        await Scheduler(db, clock=at(utc(2026, 11, day, 7, 0, 1))).run_pass()
    row = await task_row(db, task_id)
    assert (row["status"], row["next_fire_at"]) == ("completed", None)
    assert [r["scheduled_for"] for r in await runs_of(db, task_id)] == [utc(2026, 11, 26, 7), utc(2026, 11, 27, 7)]


async def test_the_scheduler_takes_the_dst_gap_and_fold_from_the_schedule_math(db: asyncpg.Pool) -> None:
    # Europe/Chisinau springs forward on 2026-03-29 at 02:00 -> 03:00: 02:30 fires at 03:30 EEST.
    gap = await new_task(db, "30 2 * * *", created=utc(2026, 3, 27, 12))
    assert (await task_row(db, gap))["next_fire_at"] == utc(2026, 3, 28, 0, 30)  # 02:30 EET
    await Scheduler(db, clock=at(utc(2026, 3, 28, 0, 30, 1))).run_pass()
    assert (await task_row(db, gap))["next_fire_at"] == utc(2026, 3, 29, 0, 30)  # 03:30 EEST
    await Scheduler(db, clock=at(utc(2026, 3, 29, 0, 30, 1))).run_pass()
    assert (await task_row(db, gap))["next_fire_at"] == utc(2026, 3, 29, 23, 30)  # 02:30 EEST on the 30th
    assert [r["scheduled_for"] for r in await runs_of(db, gap)] == [utc(2026, 3, 28, 0, 30), utc(2026, 3, 29, 0, 30)]
    async with db.acquire() as conn:
        await conn.execute("DELETE FROM tasks WHERE id = $1", gap)
    # America/New_York falls back on 2026-11-01: 01:30 happens twice and fires once, at the first (EDT).
    fold = await new_task(db, "30 1 * * *", tz="America/New_York", created=utc(2026, 10, 31, 12))
    await Scheduler(db, clock=at(utc(2026, 11, 1, 5, 30, 1))).run_pass()
    assert (await task_row(db, fold))["next_fire_at"] == utc(2026, 11, 2, 6, 30)  # 01:30 EST on the 2nd
    assert [r["scheduled_for"] for r in await runs_of(db, fold)] == [utc(2026, 11, 1, 5, 30)]


# Restarts: the scheduler was down from 09:00Z to 12:00:30Z; "*/10 * * * *" missed 09:00 ... 12:00 (19 fires).
DOWN_FROM = utc(2026, 11, 26, 9, 0)
BACK_AT = utc(2026, 11, 26, 12, 0, 30)


async def missed_task(db: asyncpg.Pool, expr: str = "*/10 * * * *", **fields: Any) -> UUID:
    task_id = await new_task(db, expr, created=utc(2026, 11, 26, 8, 55), **fields)
    await set_next(db, task_id, DOWN_FROM)
    await Scheduler(db, clock=at(BACK_AT)).run_pass()
    assert (await task_row(db, task_id))["next_fire_at"] == utc(2026, 11, 26, 12, 10)
    return task_id


async def test_after_downtime_skip_records_one_skipped_row_with_the_count(db: asyncpg.Pool) -> None:
    task_id = await missed_task(db, misfire_policy="skip")
    [row] = await runs_of(db, task_id)
    assert (row["status"], row["scheduled_for"]) == ("skipped", utc(2026, 11, 26, 12, 0))
    assert row["reason"] == (
        "missed 19 fires from 2026-11-26 11:00:00 EET to 2026-11-26 14:00:00 EET: "
        "no scheduler was running (misfire_policy=skip)"
    )


async def test_after_downtime_run_once_runs_the_newest_and_records_the_coalesced_rest(db: asyncpg.Pool) -> None:
    task_id = await missed_task(db)  # run_once with the default 3600 s grace
    coalesced, run = await runs_of(db, task_id)
    assert (run["status"], run["scheduled_for"], run["trigger_data"]) == (
        "queued",
        utc(2026, 11, 26, 12, 0),
        {"catch_up": True},
    )
    assert (coalesced["status"], coalesced["scheduled_for"]) == ("skipped", utc(2026, 11, 26, 11, 50))
    assert coalesced["reason"] == (
        "missed 18 fires from 2026-11-26 11:00:00 EET to 2026-11-26 13:50:00 EET: "
        "coalesced into the run for 2026-11-26 14:00:00 EET (misfire_policy=run_once)"
    )


async def test_after_downtime_run_once_outside_the_grace_period_runs_nothing(db: asyncpg.Pool) -> None:
    task_id = await missed_task(db, misfire_grace_seconds=10)
    [row] = await runs_of(db, task_id)
    assert row["status"] == "skipped" and row["scheduled_for"] == utc(2026, 11, 26, 12, 0)
    assert "older than misfire_grace_seconds=10 (misfire_policy=run_once)" in row["reason"]


async def test_after_downtime_catch_up_runs_every_missed_fire(db: asyncpg.Pool) -> None:
    task_id = await missed_task(db, misfire_policy="catch_up")
    runs = await runs_of(db, task_id)
    assert [r["scheduled_for"] for r in runs] == [DOWN_FROM + timedelta(minutes=10 * i) for i in range(19)]
    assert {r["status"] for r in runs} == {"queued"}


async def test_catch_up_is_capped_at_the_newest_hundred_missed_fires(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "* * * * *", created=utc(2026, 11, 26, 8, 55), misfire_policy="catch_up")
    await set_next(db, task_id, DOWN_FROM)
    await Scheduler(db, clock=at(BACK_AT)).run_pass()
    runs = await runs_of(db, task_id)
    queued = [r["scheduled_for"] for r in runs if r["status"] == "queued"]
    assert queued == [utc(2026, 11, 26, 10, 21) + timedelta(minutes=i) for i in range(100)]  # 10:21 ... 12:00
    [older] = [r for r in runs if r["status"] == "skipped"]
    assert older["scheduled_for"] == utc(2026, 11, 26, 10, 20)
    assert older["reason"] == (
        "missed 81 fires from 2026-11-26 11:00:00 EET to 2026-11-26 12:20:00 EET: "
        "catch_up replays at most the newest 100 missed fires (misfire_policy=catch_up)"
    )


async def test_a_long_outage_of_a_per_second_schedule_is_summarised_not_walked(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "* * * * * *", created=utc(2026, 11, 20), misfire_policy="skip")
    await set_next(db, task_id, utc(2026, 11, 23))
    await Scheduler(db, clock=at(utc(2026, 11, 26, 0, 0, 0, 500_000))).run_pass()
    runs = await runs_of(db, task_id)
    skipped = [r for r in runs if r["status"] == "skipped"]
    assert len(skipped) == 1 and skipped[0]["scheduled_for"] == utc(2026, 11, 25, 23, 59, 55)
    assert skipped[0]["reason"].startswith("missed more than 10,000 fires from 2026-11-23 02:00:00 EET")
    # The fires of the last ON_TIME seconds were not missed: they run.
    assert [r["scheduled_for"] for r in runs if r["status"] == "queued"][-1] == utc(2026, 11, 26)


async def test_a_real_restart_decides_by_the_misfire_policy(db: asyncpg.Pool, database_url: str) -> None:
    # The loop itself (LISTEN, pass, sleep), on pinned clocks: it ran at 08:55:30, the process was
    # down until 12:00:30, and "*/10 * * * *" missed 09:00 ... 12:00 (as in missed_task, without run_pass).
    task_id = await new_task(db, "*/10 * * * *", created=utc(2026, 11, 26, 8, 55), misfire_policy="skip")
    async with running_scheduler(db, database_url, clock=at(utc(2026, 11, 26, 8, 55, 30))) as scheduler:
        await wait_until(lambda: passed(scheduler))
    assert (await task_row(db, task_id))["next_fire_at"] == DOWN_FROM and await runs_of(db, task_id) == []
    async with running_scheduler(db, database_url, clock=at(BACK_AT)):
        await wait_until(lambda: task_advanced(db, task_id, utc(2026, 11, 26, 12, 10)))
    [row] = await runs_of(db, task_id)
    assert (row["status"], row["scheduled_for"]) == ("skipped", utc(2026, 11, 26, 12, 0))
    assert row["reason"] == (
        "missed 19 fires from 2026-11-26 11:00:00 EET to 2026-11-26 14:00:00 EET: "
        "no scheduler was running (misfire_policy=skip)"
    )


async def passed(scheduler: Scheduler, count: int = 1) -> bool:
    """The loop has made `count` passes (its LISTEN connection is up before the first)."""
    return scheduler.passes >= count


async def listen_pids(db: asyncpg.Pool) -> set[int]:
    async with db.acquire() as conn:
        rows = await conn.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'"
        )
    return {r["pid"] for r in rows}


async def task_advanced(db: asyncpg.Pool, task_id: UUID, to: datetime) -> bool:
    return bool((await task_row(db, task_id))["next_fire_at"] >= to)


async def wait_until(check: Callable[[], Any], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_scheduler(db: asyncpg.Pool, dsn: str | None = None, **options: Any) -> AsyncIterator[Scheduler]:
    scheduler = Scheduler(db, dsn=dsn, **options)
    loop = asyncio.create_task(scheduler.run())
    try:
        yield scheduler
    finally:
        await scheduler.stop()
        await asyncio.wait_for(loop, timeout=10)


# Overlap: fire at 08:30 local, hold its run 'running', then the 08:40 fire arrives.
async def overlapping(db: asyncpg.Pool, policy: str) -> tuple[UUID, list[asyncpg.Record]]:
    task_id = await new_task(db, "*/10 * * * *", created=utc(2026, 11, 26, 6, 25), overlap_policy=policy)
    await Scheduler(db, clock=at(utc(2026, 11, 26, 6, 30, 1))).run_pass()
    async with db.acquire() as conn:
        await conn.execute("UPDATE runs SET status = 'running', started_at = now() WHERE task_id = $1", task_id)
    await Scheduler(db, clock=at(utc(2026, 11, 26, 6, 40, 1))).run_pass()
    return task_id, await runs_of(db, task_id)


async def test_overlap_skip_records_the_fire_as_skipped_naming_the_running_run(db: asyncpg.Pool) -> None:
    _, (first, second) = await overlapping(db, "skip")
    assert (second["status"], second["scheduled_for"]) == ("skipped", utc(2026, 11, 26, 6, 40))
    assert second["reason"] == f"previous run {first['id']} still running (overlap_policy=skip)"


async def test_overlap_queue_queues_behind_the_running_run_on_the_task_key(db: asyncpg.Pool) -> None:
    task_id, (first, second) = await overlapping(db, "queue")
    assert (first["status"], second["status"]) == ("running", "queued")
    assert first["concurrency_key"] == second["concurrency_key"] == f"task:{task_id}"


async def test_overlap_cancel_previous_asks_the_running_run_to_stop(db: asyncpg.Pool) -> None:
    _, (first, second) = await overlapping(db, "cancel_previous")
    assert first["cancel_requested"] and second["status"] == "queued"
    assert first["reason"] == "superseded by the run for 2026-11-26 08:40:00 EET (overlap_policy=cancel_previous)"


async def test_overlap_allow_runs_both_without_a_key(db: asyncpg.Pool) -> None:
    _, (first, second) = await overlapping(db, "allow")
    assert (first["status"], second["status"]) == ("running", "queued")
    assert first["concurrency_key"] is None and second["concurrency_key"] is None


async def test_a_snoozed_task_records_the_snooze_skips_to_its_end_then_fires(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "*/10 * * * *", created=utc(2026, 11, 26, 6, 25))
    async with db.acquire() as conn:
        await conn.execute("UPDATE tasks SET snoozed_until = $2 WHERE id = $1", task_id, utc(2026, 11, 26, 7, 5))
    await Scheduler(db, clock=at(utc(2026, 11, 26, 6, 30, 1))).run_pass()
    row = await task_row(db, task_id)
    assert row["next_fire_at"] == utc(2026, 11, 26, 7, 10) and row["snoozed_until"] is not None
    [skipped] = await runs_of(db, task_id)
    assert skipped["reason"] == "snoozed until 2026-11-26 09:05:00 EET: no fire before then"
    await Scheduler(db, clock=at(utc(2026, 11, 26, 7, 10, 1))).run_pass()
    row = await task_row(db, task_id)
    assert row["snoozed_until"] is None and row["next_fire_at"] == utc(2026, 11, 26, 7, 20)
    assert [r["status"] for r in await runs_of(db, task_id)] == ["skipped", "queued"]


async def test_event_condition_and_paused_tasks_are_not_fired(db: asyncpg.Pool) -> None:
    created = utc(2026, 11, 26, 6)
    cond = await new_task(
        db, "60", kind="condition", created=created, probe={"uses": "pao.noop"}, when="${probe.x is defined}"
    )
    await new_task(db, "orders.*", kind="event", created=created)
    paused = await new_task(db, "*/10 * * * *", created=created)
    async with db.acquire() as conn:
        await conn.execute("UPDATE tasks SET status = 'paused' WHERE id = $1", paused)
    result = await Scheduler(db, clock=at(utc(2026, 11, 26, 8))).run_pass()
    assert result.tasks == 0
    # A condition's first probe falls somewhere in its first interval (probes are spread), and the
    # scheduler leaves it to the probers.
    assert created <= (await task_row(db, cond))["next_fire_at"] <= created + timedelta(seconds=60)


async def test_a_schedule_that_no_longer_evaluates_pauses_its_task_with_the_reason(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "*/10 * * * *", created=utc(2026, 11, 26, 6))
    async with db.acquire() as conn:
        await conn.execute("UPDATE tasks SET timezone = 'Mars/Olympus_Mons' WHERE id = $1", task_id)
    await Scheduler(db, clock=at(utc(2026, 11, 26, 8))).run_pass()
    assert (await task_row(db, task_id))["status"] == "paused"
    [row] = await runs_of(db, task_id)
    assert row["status"] == "skipped" and "Mars/Olympus_Mons" in row["reason"] and "update_task" in row["reason"]


async def test_the_loop_wakes_for_a_new_task_and_fires_it_on_time(db: asyncpg.Pool, database_url: str) -> None:
    async with running_scheduler(db, database_url, max_sleep=30) as scheduler:
        await wait_until(lambda: passed(scheduler))  # then asleep for 30 s: only the pao_tasks NOTIFY can wake it
        task_id = await new_task(db, "* * * * * *", created=datetime.now(UTC))
        await wait_until(lambda: has_runs(db, task_id, 3), timeout=10)
    runs = await runs_of(db, task_id)
    assert all(r["scheduled_for"].microsecond == 0 for r in runs)
    # The loop's own wake-ups create runs ahead, claimable at the instant. Not the first: the pass the
    # NOTIFY triggers makes it, and the task may have been created a few milliseconds before it was due.
    assert all(r["created_at"] <= r["scheduled_for"] == r["available_at"] for r in runs[1:])


async def has_runs(db: asyncpg.Pool, task_id: UUID, count: int) -> bool:
    return len(await runs_of(db, task_id)) >= count


async def test_the_loop_survives_losing_its_listen_connection(db: asyncpg.Pool, database_url: str) -> None:
    async with running_scheduler(db, database_url, max_sleep=30) as scheduler:
        await wait_until(lambda: passed(scheduler))  # listening, then asleep for 30 s
        killed = await listen_pids(db)
        assert killed
        async with db.acquire() as conn:
            await conn.execute("SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid", list(killed))

        async def listening_again() -> bool:
            return bool(await listen_pids(db) - killed)

        await wait_until(listening_again)  # re-made on its own: only its NOTIFY can wake the loop now
        task_id = await new_task(db, "* * * * * *", created=datetime.now(UTC))
        await wait_until(lambda: has_runs(db, task_id, 1), timeout=5)
        assert scheduler.passes >= 2


async def test_several_schedulers_on_one_database_neither_double_nor_drop_a_fire(
    db: asyncpg.Pool, database_url: str
) -> None:
    schedulers = 3
    now = utc(2026, 11, 26, 12, 0, 10)
    ids = [
        await new_task(db, "* * * * *", created=utc(2026, 11, 26, 11), misfire_policy="catch_up") for _ in range(200)
    ]
    async with db.acquire() as conn:
        await conn.execute("UPDATE tasks SET next_fire_at = $1, overlap_policy = 'allow'", utc(2026, 11, 26, 11, 30))
    pools = [await create_pool(database_url, max_size=2) for _ in range(schedulers)]
    try:
        instances = [Scheduler(pool, clock=at(now), batch_size=7) for pool in pools]

        async def drain(scheduler: Scheduler) -> None:
            while (await scheduler.run_pass()).tasks:
                pass

        await asyncio.wait_for(asyncio.gather(*(drain(s) for s in instances)), timeout=60)
    finally:
        for pool in pools:
            await pool.close()
    expected = [utc(2026, 11, 26, 11, 30) + timedelta(minutes=i) for i in range(31)]  # 11:30 ... 12:00
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT task_id, scheduled_for, status FROM runs ORDER BY task_id, scheduled_for")
    by_task: dict[UUID, list[datetime]] = {i: [] for i in ids}
    for row in rows:
        by_task[row["task_id"]].append(row["scheduled_for"])
    assert all(fires == expected for fires in by_task.values())
    assert len(rows) == 200 * 31 and {r["status"] for r in rows} == {"queued"}
    assert all(s.passes >= 2 for s in instances)  # every instance took part


async def test_several_live_schedulers_fire_a_per_second_cron_exactly_once_per_second(
    db: asyncpg.Pool, database_url: str
) -> None:
    pools = [await create_pool(database_url, max_size=3) for _ in range(3)]
    try:
        async with contextlib.AsyncExitStack() as stack:
            for pool in pools:
                await stack.enter_async_context(running_scheduler(pool, database_url))
            ids = [await new_task(db, "* * * * * *", created=datetime.now(UTC)) for _ in range(20)]

            async def all_fired_thrice() -> bool:
                return all([await has_runs(db, task_id, 3) for task_id in ids])

            await wait_until(all_fired_thrice, timeout=30)
    finally:
        for pool in pools:
            await pool.close()
    for task_id in ids:
        fires = [r["scheduled_for"] for r in await runs_of(db, task_id)]
        assert len(fires) >= 3
        # Consecutive whole seconds from the first to the last: nothing dropped, nothing doubled.
        assert fires == [fires[0] + timedelta(seconds=i) for i in range(len(fires))]


async def test_a_task_with_a_dedupe_key_fires_through_the_dedupe_rule(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "*/10 * * * *", created=utc(2026, 11, 26, 6, 25), dedupe_key="${task.title}")
    await Scheduler(db, clock=at(utc(2026, 11, 26, 6, 30, 1))).run_pass()
    [run] = await runs_of(db, task_id)
    assert (run["status"], run["dedupe_key"], run["concurrency_key"]) == ("queued", "t", f"task:{task_id}")
    # The next fire while that run is still queued: the overlap rule records it (dedupe would too).
    await Scheduler(db, clock=at(utc(2026, 11, 26, 6, 40, 1))).run_pass()
    assert [r["status"] for r in await runs_of(db, task_id)] == ["queued", "skipped"]
