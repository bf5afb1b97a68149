"""create_task refuses what it cannot keep, leaves nothing behind when it does, and list_tasks
survives a bad stored row."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import pytest

from pao_orchestrator.engine import tasks as task_service
from pao_orchestrator.errors import InvalidArgument
from tests.engine.support import NOOP, NoTools, new_task, owner

NOW = datetime(2026, 3, 2, 9, tzinfo=UTC)


async def create(db: asyncpg.Pool, **fields: Any) -> task_service.CreatedTask:
    arguments = {"title": "t", "schedule_kind": "cron", "schedule_expr": "*/10 * * * *", "payload": NOOP, **fields}
    return await task_service.create_task(db, NoTools(), await owner(db), arguments, clock=lambda: NOW)


async def counts(db: asyncpg.Pool) -> tuple[int, int]:
    async with db.acquire() as conn:
        return await conn.fetchval("SELECT count(*) FROM tasks"), await conn.fetchval("SELECT count(*) FROM audit_log")


async def test_an_instant_out_of_range_is_refused_and_leaves_no_row(db: asyncpg.Pool) -> None:
    with pytest.raises(InvalidArgument, match="too far in the future") as refused:
        await create(db, schedule_kind="once", schedule_expr="9999-12-31T23:59:59.999999Z")
    assert refused.value.field == "schedule_expr"
    assert await counts(db) == (0, 0)
    tasks, _ = await task_service.list_tasks(
        db, await owner(db), status=None, schedule_kind=None, limit=50, cursor=None
    )
    assert tasks == []


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"priority": "5"}, "priority", "valid integer"),
        ({"priority": True}, "priority", "valid integer"),
        ({"max_retries": 2.0}, "max_retries", "valid integer"),
        ({"backoff_base_seconds": "2"}, "backoff_base_seconds", "valid number"),
        ({"backoff_base_seconds": float("nan")}, "backoff_base_seconds", "NaN"),
        ({"title": "a\x00b"}, "title", "NUL character"),
        ({"description": "x\x00"}, "description", "NUL character"),
        ({"concurrency_key": "k\x00"}, "concurrency_key", "NUL character"),
        (
            {"payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"x": [1, float("nan")]}}]}},
            "payload.pipeline[0].with.x[1]",
            "is NaN",
        ),
        (
            {"payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"big": float("inf")}}]}},
            "payload.pipeline[0].with.big",
            "is Infinity",
        ),
        (
            {"payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"t": "\ud800"}}]}},
            "payload.pipeline[0].with.t",
            "lone surrogate",
        ),
    ],
)
async def test_input_is_strict_and_refused_with_the_field_path(
    db: asyncpg.Pool, fields: dict[str, Any], field: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message) as refused:
        await create(db, **fields)
    assert refused.value.field == field
    assert await counts(db) == (0, 0)


async def test_integers_where_numbers_are_asked_are_accepted(db: asyncpg.Pool) -> None:
    created = await create(db, backoff_base_seconds=3, priority=1)
    assert created.task.backoff_base_seconds == 3.0 and created.task.priority == 1


async def test_a_key_reading_event_on_a_task_no_event_starts_is_refused(db: asyncpg.Pool) -> None:
    with pytest.raises(InvalidArgument, match="set only for runs an event starts") as refused:
        await create(db, concurrency_key="mailbox-${event.data.account}")
    assert refused.value.field == "concurrency_key"
    with pytest.raises(InvalidArgument, match="'event'") as refused:
        await create(db, dedupe_key="${event.data.id}")
    assert refused.value.field == "dedupe_key"
    made = await create(db, schedule_kind="event", schedule_expr="mail.*", concurrency_key="mailbox-${event.data.id}")
    assert made.task.concurrency_key == "mailbox-${event.data.id}"
    assert await counts(db) == (1, 1)


async def test_a_key_that_could_loop_or_build_values_is_refused(db: asyncpg.Pool) -> None:
    for key in ("${% for i in task.title %}${i}${% endfor %}", "${ task.title * 3 }", "${ task.title.ljust(99) }"):
        with pytest.raises(InvalidArgument, match="a key may only read values") as refused:
            await create(db, concurrency_key=key)
        assert refused.value.field == "concurrency_key"
    made = await create(db, concurrency_key="mail-${ task.title | lower | default('x') }")
    assert made.task.concurrency_key is not None


async def test_one_task_whose_schedule_no_longer_evaluates_does_not_break_list_tasks(db: asyncpg.Pool) -> None:
    good = await new_task(db, "*/10 * * * *", created=NOW)
    bad = await new_task(db, "*/10 * * * *", created=NOW)
    async with db.acquire() as conn:
        await conn.execute("UPDATE tasks SET timezone = 'Mars/Olympus_Mons' WHERE id = $1", bad)
    tasks, _ = await task_service.list_tasks(
        db, await owner(db), status=None, schedule_kind=None, limit=50, cursor=None
    )
    by_id = {t.id: t for t in tasks}
    assert set(by_id) == {good, bad}
    assert by_id[good].next_fires and by_id[good].schedule_error is None
    assert by_id[bad].next_fires == [] and "Mars/Olympus_Mons" in (by_id[bad].schedule_error or "")
    assert (await task_service.get_task(db, await owner(db), bad)).schedule_error is not None
