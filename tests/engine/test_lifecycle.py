"""Task life-cycle: update_task, snooze, pause/resume, cancel_task, preview_schedule (real Postgres)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from pao_orchestrator.engine import lifecycle
from pao_orchestrator.engine.runtime import Scheduler
from pao_orchestrator.errors import Conflict, InvalidArgument
from pao_orchestrator.store import TaskRecord
from tests.engine import support
from tests.engine.support import NoTools, owner, runs_of, task_row

NOW = datetime(2026, 11, 26, 6, 0, tzinfo=UTC)  # 08:00 in Chisinau


def at(instant: datetime) -> Callable[[], datetime]:
    return lambda: instant


async def new_task(db: asyncpg.Pool, expr: str = "30 8 * * *", kind: str = "cron", **fields: Any) -> UUID:
    return await support.new_task(db, expr, created=NOW, kind=kind, **fields)


async def audit_actions(db: asyncpg.Pool, task_id: UUID) -> list[str]:
    async with db.acquire() as conn:
        rows = await conn.fetch("SELECT action FROM audit_log WHERE target_id = $1 ORDER BY id", str(task_id))
    return [r["action"] for r in rows]


async def update(db: asyncpg.Pool, task_id: UUID, when: datetime = NOW, **changes: Any) -> lifecycle.TaskChange:
    return await lifecycle.update_task(db, NoTools(), await owner(db), task_id, changes, clock=at(when))


async def test_update_task_recomputes_the_next_fire_from_now_when_the_schedule_changes(db: asyncpg.Pool) -> None:
    task_id = await new_task(db)
    later = NOW + timedelta(days=2)
    change = await update(db, task_id, later, schedule_expr="0 9 * * 1", timezone="Asia/Tokyo")
    assert change.changed and change.message.startswith("updated schedule_expr, timezone; next fire 2026-11-30T09:00")
    row = await task_row(db, task_id)
    assert row["next_fire_at"] == datetime(2026, 11, 30, 0, 0, tzinfo=UTC)  # Monday 09:00 JST
    assert row["schedule_anchor"] == later
    assert change.task.next_fires[:2] == ["2026-11-30T09:00:00+09:00", "2026-12-07T09:00:00+09:00"]
    assert await audit_actions(db, task_id) == ["create_task", "update_task"]


async def test_update_task_of_other_fields_keeps_the_next_fire(db: asyncpg.Pool) -> None:
    task_id = await new_task(db)
    before = (await task_row(db, task_id))["next_fire_at"]
    change = await update(db, task_id, NOW + timedelta(days=3), title="new", priority=2, overlap_policy="queue")
    row = await task_row(db, task_id)
    assert (row["title"], row["priority"], row["overlap_policy"], row["next_fire_at"]) == ("new", 2, "queue", before)
    assert change.message == "updated overlap_policy, priority, title"
    again = await update(db, task_id, title="new")
    assert not again.changed and again.message.startswith("nothing changed")


async def test_an_rrule_count_counts_again_from_the_update(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "FREQ=DAILY;COUNT=2;BYHOUR=9;BYMINUTE=0", kind="rrule")
    change = await update(db, task_id, NOW + timedelta(days=10), schedule_expr="FREQ=DAILY;COUNT=3;BYHOUR=9;BYMINUTE=0")
    assert [f[:10] for f in change.task.next_fires] == ["2026-12-06", "2026-12-07", "2026-12-08"]


async def test_update_task_validates_like_create_and_writes_nothing_on_error(db: asyncpg.Pool) -> None:
    task_id = await new_task(db)
    before = dict(await task_row(db, task_id))
    cases = [
        ({"schedule_expr": "61 * * * *"}, "schedule_expr"),
        ({"timezone": "Mars/Base"}, "timezone"),
        ({"priority": 12}, "priority"),
        ({"payload": {"pipeline": [{"id": "a", "uses": "nosuch.tool"}]}}, "payload.pipeline[0].uses"),
        ({"dedupe_key": "${steps.a}"}, "dedupe_key"),
        ({"colour": "red"}, "colour"),
        ({}, ""),
    ]
    for changes, field in cases:
        with pytest.raises(InvalidArgument) as caught:
            await update(db, task_id, **changes)
        assert caught.value.field == field, (changes, caught.value)
    with pytest.raises(InvalidArgument, match="in the past"):
        await update(db, task_id, schedule_kind="once", schedule_expr="2020-01-01T00:00:00Z")
    assert dict(await task_row(db, task_id)) == before


async def test_update_task_clears_a_key_with_an_empty_string_and_refuses_a_cancelled_task(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, dedupe_key="daily")
    await update(db, task_id, dedupe_key="")
    assert (await task_row(db, task_id))["dedupe_key"] is None
    await lifecycle.cancel_task(db, await owner(db), task_id, stop_running=True, clock=at(NOW))
    with pytest.raises(Conflict, match="cancelled"):
        await update(db, task_id, title="x")


async def test_a_new_schedule_brings_a_completed_task_back(db: asyncpg.Pool) -> None:
    task_id = await new_task(db, "2026-11-26T08:30:00", kind="once")
    await Scheduler(db, clock=at(NOW + timedelta(minutes=30, seconds=1))).run_pass()
    assert (await task_row(db, task_id))["status"] == "completed"
    await update(db, task_id, NOW + timedelta(hours=1), schedule_expr="2026-11-27T08:30:00")
    row = await task_row(db, task_id)
    assert (row["status"], row["next_fire_at"]) == ("active", datetime(2026, 11, 27, 6, 30, tzinfo=UTC))


async def snooze(db: asyncpg.Pool, task_id: UUID, **how: Any) -> lifecycle.TaskChange:
    how.setdefault("seconds", None)
    how.setdefault("until", None)
    return await lifecycle.snooze(db, await owner(db), task_id, clock=at(NOW), **how)


async def test_snooze_until_an_instant_hides_the_fires_before_it(db: asyncpg.Pool) -> None:
    task_id = await new_task(db)
    change = await snooze(db, task_id, until="2026-11-28T00:00:00+02:00")
    row = await task_row(db, task_id)
    assert row["snoozed_until"] == datetime(2026, 11, 27, 22, 0, tzinfo=UTC)
    assert change.task.next_fires[0] == "2026-11-28T08:30:00+02:00"
    assert change.message == "snoozed until 2026-11-28T00:00:00+02:00; next fire 2026-11-28T08:30:00+02:00"
    by_seconds = await snooze(db, task_id, seconds=3600)
    assert by_seconds.task.snoozed_until == NOW + timedelta(hours=1)  # a new snooze replaces the old one
    assert await audit_actions(db, task_id) == ["create_task", "snooze", "snooze"]


async def test_snooze_rejects_bad_arguments_and_tasks_that_are_not_active(db: asyncpg.Pool) -> None:
    task_id = await new_task(db)
    for how, message in [
        ({}, "exactly one"),
        ({"seconds": 60, "until": "2026-12-01T00:00:00Z"}, "exactly one"),
        ({"seconds": 0}, "more than 0"),
        ({"until": "tomorrow"}, "not an ISO 8601"),
        ({"until": "2026-12-01T08:00:00"}, "no UTC offset"),
        ({"until": "2026-11-26T05:00:00Z"}, "not in the future"),
    ]:
        with pytest.raises(InvalidArgument, match=message):
            await snooze(db, task_id, **how)
    await lifecycle.pause_task(db, await owner(db), task_id, clock=at(NOW))
    with pytest.raises(Conflict, match=r"paused.*resume_task"):
        await snooze(db, task_id, seconds=60)
    await lifecycle.cancel_task(db, await owner(db), task_id, stop_running=True, clock=at(NOW))
    with pytest.raises(Conflict, match="cancelled"):
        await snooze(db, task_id, seconds=60)


async def test_pause_is_idempotent_and_resume_records_the_fires_that_fell_in_the_pause(db: asyncpg.Pool) -> None:
    me = await owner(db)
    task_id = await new_task(db, "0 * * * *")  # hourly; next fire 07:00Z
    first = await lifecycle.pause_task(db, me, task_id, clock=at(NOW))
    second = await lifecycle.pause_task(db, me, task_id, clock=at(NOW))
    assert (first.changed, second.changed, second.message) == (True, False, "already paused")
    assert first.task.status == "paused" and first.task.next_fires == []
    # Paused for three hours and a half: 07:00, 08:00 and 09:00 UTC did not fire.
    assert (await Scheduler(db, clock=at(NOW + timedelta(hours=3))).run_pass()).tasks == 0
    resumed = await lifecycle.resume_task(db, me, task_id, clock=at(NOW + timedelta(hours=3, minutes=30)))
    assert resumed.task.status == "active" and resumed.task.next_fire_at == NOW + timedelta(hours=4)
    [row] = await runs_of(db, task_id)
    assert (row["status"], row["scheduled_for"]) == ("skipped", NOW + timedelta(hours=3))
    assert row["reason"] == (
        "not run: the task was paused (3 fires from 2026-11-26 09:00:00 EET to 2026-11-26 11:00:00 EET)"
    )
    noop = await lifecycle.resume_task(db, me, task_id, clock=at(NOW + timedelta(hours=4)))
    assert not noop.changed
    assert await audit_actions(db, task_id) == ["create_task", "pause_task", "resume_task"]


async def test_resume_ends_a_snooze_early_and_refuses_finished_tasks(db: asyncpg.Pool) -> None:
    me = await owner(db)
    task_id = await new_task(db)
    await snooze(db, task_id, seconds=5 * 86_400)
    resumed = await lifecycle.resume_task(db, me, task_id, clock=at(NOW))
    assert resumed.changed and resumed.task.snoozed_until is None
    assert resumed.task.next_fires[0] == "2026-11-26T08:30:00+02:00"
    await lifecycle.cancel_task(db, me, task_id, stop_running=True, clock=at(NOW))
    with pytest.raises(Conflict, match="cancelled"):
        await lifecycle.resume_task(db, me, task_id, clock=at(NOW))
    with pytest.raises(Conflict, match="nothing to pause"):
        await lifecycle.pause_task(db, me, task_id, clock=at(NOW))


async def test_pausing_withdraws_runs_created_ahead_of_their_instant(db: asyncpg.Pool) -> None:
    me = await owner(db)
    task_id = await new_task(db, "* * * * * *")
    async with db.acquire() as conn:
        in_a_second = await conn.fetchval("SELECT date_trunc('second', now()) + interval '2 seconds'")
        await conn.execute(
            "UPDATE tasks SET next_fire_at = $2::timestamptz + interval '1 second' WHERE id = $1", task_id, in_a_second
        )
        await conn.execute(
            "INSERT INTO runs (task_id, trigger, scheduled_for, available_at) VALUES ($1, 'schedule', $2, $2)",
            task_id,
            in_a_second,
        )
    paused = await lifecycle.pause_task(db, me, task_id, clock=at(NOW))
    assert await runs_of(db, task_id) == []
    assert paused.task.next_fire_at == in_a_second  # the withdrawn fire is the first one the pause suppressed


async def test_cancel_task_cancels_queued_runs_stops_running_ones_and_is_idempotent(db: asyncpg.Pool) -> None:
    me = await owner(db)
    task_id = await new_task(db, "*/10 * * * *")
    async with db.acquire() as conn:
        for status, minute in (("queued", 0), ("running", 10), ("succeeded", 20)):
            await conn.execute(
                "INSERT INTO runs (task_id, trigger, status, scheduled_for) VALUES ($1, 'schedule', $2, $3)",
                task_id,
                status,
                NOW - timedelta(hours=1, minutes=minute),
            )
    result = await lifecycle.cancel_task(db, me, task_id, stop_running=True, clock=at(NOW))
    assert result.changed and len(result.cancelled_runs) == 1 and len(result.stopping_runs) == 1
    assert (result.task.status, result.task.next_fire_at, result.task.next_fires) == ("cancelled", None, [])
    runs = {r["status"]: r for r in await runs_of(db, task_id)}
    assert set(runs) == {"cancelled", "running", "succeeded"}
    assert (
        runs["running"]["cancel_requested"] and runs["cancelled"]["reason"] == "task cancelled by owner (cancel_task)"
    )
    again = await lifecycle.cancel_task(db, me, task_id, stop_running=True, clock=at(NOW))
    assert not again.changed and again.message == "already cancelled"
    assert await audit_actions(db, task_id) == ["create_task", "cancel_task"]
    assert (await Scheduler(db, clock=at(NOW + timedelta(days=1))).run_pass()).tasks == 0


async def test_cancel_task_can_let_a_running_run_finish(db: asyncpg.Pool) -> None:
    task_id = await new_task(db)
    async with db.acquire() as conn:
        await conn.execute("INSERT INTO runs (task_id, trigger, status) VALUES ($1, 'manual', 'running')", task_id)
    result = await lifecycle.cancel_task(db, await owner(db), task_id, stop_running=False, clock=at(NOW))
    assert result.stopping_runs == [] and not (await runs_of(db, task_id))[0]["cancel_requested"]


def test_preview_schedule_shows_the_dst_gap_with_offsets() -> None:
    preview = lifecycle.preview_schedule(
        "cron", "30 2 * * *", "Europe/Chisinau", count=3, after="2026-03-27T12:00:00Z", now=NOW
    )
    assert [f.at for f in preview.fires] == [
        "2026-03-28T02:30:00+02:00",
        "2026-03-29T03:30:00+03:00",  # 02:30 does not exist that night: same offset after the gap
        "2026-03-30T02:30:00+03:00",
    ]
    assert (
        preview.fires[1].utc == "2026-03-29T00:30:00Z" and preview.fires[1].display == "Sun 29 Mar 2026 03:30:00 EEST"
    )


def test_preview_schedule_explains_what_it_cannot_show() -> None:
    assert lifecycle.preview_schedule("event", "orders.*", "UTC", count=3, after=None, now=NOW).note is not None
    with pytest.raises(InvalidArgument, match="no UTC offset"):
        lifecycle.preview_schedule("cron", "* * * * *", "UTC", count=3, after="2026-03-27T12:00:00", now=NOW)
    with pytest.raises(InvalidArgument) as caught:
        lifecycle.preview_schedule("cron", "* * *", "UTC", count=3, after=None, now=NOW)
    assert caught.value.field == "schedule_expr"
    with pytest.raises(InvalidArgument) as caught:
        lifecycle.preview_schedule("cron", "* * * * *", "UTC", count=0, after=None, now=NOW)
    assert caught.value.field == "count"
    done = lifecycle.preview_schedule("once", "2026-01-01T00:00:00Z", "UTC", count=3, after=None, now=NOW)
    assert done.fires == [] and done.note is not None and "no fire after" in done.note


@pytest.mark.parametrize(
    ("expr", "first"),
    [
        ("FREQ=DAILY;BYHOUR=9", "2026-11-26T09:00:00+02:00"),
        ("FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=8;BYMINUTE=30", "2026-11-30T08:30:00+02:00"),
    ],
)
async def test_an_rrule_without_dtstart_previews_and_fires_on_whole_wall_times(
    db: asyncpg.Pool, expr: str, first: str
) -> None:
    created = datetime(2026, 11, 26, 6, 4, 39, 250_000, tzinfo=UTC)  # 08:04:39.25 in Chisinau
    preview = lifecycle.preview_schedule("rrule", expr, "Europe/Chisinau", count=3, after=None, now=created)
    task_id = await support.new_task(db, expr, created=created, kind="rrule")
    row = await task_row(db, task_id)
    assert preview.fires[0].at == first
    assert row["next_fire_at"] == datetime.fromisoformat(first)
    assert support.task_service.next_fires(TaskRecord.from_row(row), 3) == [f.at for f in preview.fires]


@pytest.mark.parametrize("created", [NOW, NOW + timedelta(microseconds=1), NOW + timedelta(minutes=59, seconds=59.9)])
async def test_an_rrule_count_without_dtstart_fires_that_many_times_after_creation(
    db: asyncpg.Pool, created: datetime
) -> None:
    # Anchored at midnight, but the hours already past do not use up COUNT, on a whole second or not.
    task_id = await support.new_task(db, "FREQ=HOURLY;COUNT=3", created=created, kind="rrule")
    fires = support.task_service.next_fires(TaskRecord.from_row(await task_row(db, task_id)), 5)
    assert fires == ["2026-11-26T09:00:00+02:00", "2026-11-26T10:00:00+02:00", "2026-11-26T11:00:00+02:00"]
    preview = lifecycle.preview_schedule(
        "rrule", "FREQ=HOURLY;COUNT=3", "Europe/Chisinau", count=5, after=None, now=created
    )
    assert [f.at for f in preview.fires] == fires
