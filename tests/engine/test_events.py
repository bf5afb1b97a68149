"""publish_event, event tasks, filters, dedupe and chaining, against a real Postgres and a real worker."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from pao_orchestrator.contracts import MAX_CHAIN_DEPTH
from pao_orchestrator.engine import Engine
from pao_orchestrator.errors import InvalidArgument
from tests.engine.support import engine_on, wait_run

NOOP_EVENT = [
    {
        "id": "seen",
        "uses": "pao.noop",
        "save_as": "seen",
        "with": {"id": "${event.id}", "topic": "${event.topic}", "data": "${event.data}", "source": "${event.source}"},
    }
]


async def event_task(engine: Engine, pattern: str, pipeline: list[dict[str, Any]] | None = None, **fields: Any) -> UUID:
    created = await engine.create_task(
        engine.owner,
        {
            "title": f"on {pattern}",
            "schedule_kind": "event",
            "schedule_expr": pattern,
            "payload": {"pipeline": pipeline or NOOP_EVENT},
            **fields,
        },
    )
    return created.task.id


async def publish(engine: Engine, topic: str, data: dict[str, Any] | None = None, **kw: Any) -> Any:
    return await engine.publish_event(
        engine.owner, topic=topic, data=data or {}, dedupe_key=kw.get("dedupe_key"), source=kw.get("source")
    )


async def test_patterns_start_the_matching_tasks_and_steps_see_the_event(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        exact = await event_task(engine, "home.door.opened")
        prefix = await event_task(engine, "home.*")
        every = await event_task(engine, "*")
        other = await event_task(engine, "office.*")
        sibling = await event_task(engine, "home.door")
        published = await publish(engine, "home.door.opened", {"who": "ana", "n": 2}, source="sensor-1")
        started = {r.task_id: r.run_id for r in published.runs}
        assert set(started) == {exact, prefix, every}
        assert other not in started and sibling not in started
        for run_id in started.values():
            run = await wait_run(engine, run_id, timeout=15)
            assert run.status == "succeeded", run.error
            assert run.trigger == "event"
            assert run.outputs == {
                "seen": {
                    "id": published.event_id,
                    "topic": "home.door.opened",
                    "data": {"who": "ana", "n": 2},
                    "source": "sensor-1",
                }
            }
        event = await engine.get_event(engine.owner, published.event_id)
        assert event.topic == "home.door.opened" and event.source == "sensor-1" and event.depth == 0
        assert {r.run_id for r in event.runs or []} == set(started.values())
        listed, _ = await engine.list_events(
            engine.owner, topic="home.*", since=None, until=None, limit=10, cursor=None
        )
        assert [e.id for e in listed] == [published.event_id]
        # Nothing matches: the event is stored all the same.
        lonely = await publish(engine, "garden.rain")
        assert [r.task_id for r in lonely.runs] == [every]
        # '*' is every published topic, not pao's own run.* (it would fire on its own ends).
        async with asyncio.timeout(10):
            while (
                len((await engine.list_runs(engine.owner, task_id=every, status=None, limit=50, cursor=None))[0]) != 2
            ):
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)
        assert len((await engine.list_runs(engine.owner, task_id=every, status=None, limit=50, cursor=None))[0]) == 2


async def test_filters_choose_and_a_broken_filter_fails_only_its_own_run(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        await event_task(engine, "run.failed")  # run.* events are stored while something can consume them
        boss = await event_task(engine, "email.received", filter='${event.data.sender == "boss@example.com"}')
        broken = await event_task(engine, "email.received", filter="${event.data.headers.missing == 1}")
        plain = await event_task(engine, "email.*")
        first = await publish(engine, "email.received", {"sender": "boss@example.com"})
        statuses = {r.task_id: r.status for r in first.runs}
        assert statuses == {boss: "queued", broken: "failed", plain: "queued"}
        failed = await engine.get_run(engine.owner, next(r.run_id for r in first.runs if r.task_id == broken))
        assert failed.error is not None and "filter" in failed.error and "headers" in failed.error
        # A run that failed without running still tells run.failed listeners.
        ends, _ = await engine.list_events(
            engine.owner, topic="run.failed", since=None, until=None, limit=10, cursor=None
        )
        assert [(e.data["run_id"], e.depth) for e in ends] == [(str(failed.id), 1)]
        for run in first.runs:
            if run.task_id != broken:
                assert (await wait_run(engine, run.run_id, timeout=15)).status == "succeeded"
        second = await publish(engine, "email.received", {"sender": "spam@example.com", "headers": {"missing": 2}})
        assert {r.task_id for r in second.runs} == {plain}


async def test_filters_and_keys_are_checked_when_saved(database_url: str, mcp_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        with pytest.raises(InvalidArgument, match="filter") as refused:
            await event_task(engine, "a.b", filter="${steps.x.y}")
        assert "unknown name 'steps'" in str(refused.value)
        with pytest.raises(InvalidArgument, match="not an expression"):
            await event_task(engine, "a.b", filter="true")
        with pytest.raises(InvalidArgument, match="loops, calls"):
            await event_task(engine, "a.b", filter="${event.data.x ~ 'y'}")
        with pytest.raises(InvalidArgument, match="applies to schedule_kind='event' only"):
            await engine.create_task(
                engine.owner,
                {
                    "title": "t",
                    "schedule_kind": "cron",
                    "schedule_expr": "0 8 * * *",
                    "payload": {"pipeline": NOOP_EVENT[:0] or [{"id": "a", "uses": "pao.noop"}]},
                    "filter": "${event.data.x}",
                },
            )
        with pytest.raises(InvalidArgument, match="whole last segment"):
            await event_task(engine, "a.*.b")


@pytest.mark.parametrize(
    ("topic", "data", "needle"),
    [
        ("bad topic", {}, "topic: 'bad topic' is not a topic"),
        ("a..b", {}, "is not a topic"),
        ("home.*", {}, "no wildcards"),
        ("run.succeeded", {}, "published by pao when runs end"),
        ("ok", {"x": "y" * 70_000}, "data: is larger than 65,536 characters of JSON (the limit, PAO_MAX_EVENT_BYTES)"),
        ("ok", {"x": "a\x00b"}, "data: "),
        ("ok", {"x": float("nan")}, "data: "),
    ],
)
async def test_malformed_or_oversized_events_are_refused_naming_the_field(
    database_url: str, mcp_config: Path, tmp_path: Path, topic: str, data: dict[str, Any], needle: str
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        with pytest.raises(InvalidArgument) as refused:
            await publish(engine, topic, data)
        assert needle in str(refused.value)
        listed, _ = await engine.list_events(engine.owner, topic=None, since=None, until=None, limit=10, cursor=None)
        assert listed == []


async def test_fifty_concurrent_publishes_of_one_dedupe_key_make_one_event(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        task = await event_task(engine, "order.paid")
        results = await asyncio.gather(
            *(publish(engine, "order.paid", {"i": i}, dedupe_key="order-42") for i in range(50))
        )
        assert len({r.event_id for r in results}) == 1
        assert sum(not r.duplicate for r in results) == 1
        assert all(r.runs and r.runs[0].task_id == task for r in results)
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM events WHERE topic = 'order.paid'") == 1
            assert await conn.fetchval("SELECT count(*) FROM runs WHERE task_id = $1", task) == 1
            audits = await conn.fetchval("SELECT count(*) FROM audit_log WHERE action = 'publish_event'")
        assert audits == 50
        # Another key, or the same key on another topic, is another event.
        other = await publish(engine, "order.paid", dedupe_key="order-43")
        assert not other.duplicate and other.event_id != results[0].event_id


async def test_task_dedupe_and_concurrency_keys_render_from_the_event(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        task = await event_task(
            engine,
            "mail.*",
            dedupe_key="${event.data.message_id}",
            dedupe_window_seconds=3600,
            concurrency_key="mailbox-${event.data.account}",
        )
        first = await publish(engine, "mail.in", {"message_id": "m1", "account": "a"})
        again = await publish(engine, "mail.in", {"message_id": "m1", "account": "a"})
        other = await publish(engine, "mail.in", {"message_id": "m2", "account": "b"})
        assert [r.status for r in first.runs] == ["queued"]
        assert [r.status for r in again.runs] == ["skipped"]
        run = await engine.get_run(engine.owner, again.runs[0].run_id)
        assert run.deduped_of == first.runs[0].run_id
        assert (await engine.get_run(engine.owner, other.runs[0].run_id)).concurrency_key == "mailbox-b"
        assert again.event_id != first.event_id and task


async def test_a_run_that_ends_publishes_its_outcome_and_another_task_fires_on_it(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        first = await event_task(
            engine, "job.start", [{"id": "a", "uses": "pao.noop", "with": {"v": "${event.data.v}"}, "save_as": "out"}]
        )
        follow = await event_task(
            engine,
            "run.succeeded",
            [{"id": "b", "uses": "pao.noop", "with": {"got": "${event.data.outputs.out.v}"}, "save_as": "got"}],
            filter=f'${{event.data.task_id == "{first}"}}',
        )
        failing = await event_task(
            engine,
            "job.start",
            [{"id": "x", "uses": "pao.sleep", "with": {"seconds": "${event.data.v}"}}],
            max_retries=0,
        )
        on_fail = await event_task(
            engine,
            "run.failed",
            [{"id": "c", "uses": "pao.noop", "with": {"e": "${event.data.error}"}, "save_as": "e"}],
        )
        published = await publish(engine, "job.start", {"v": "seven"})
        assert len(published.runs) == 2
        async with asyncio.timeout(20):
            while True:
                runs, _ = await engine.list_runs(engine.owner, task_id=follow, status=None, limit=5, cursor=None)
                fails, _ = await engine.list_runs(engine.owner, task_id=on_fail, status=None, limit=5, cursor=None)
                if runs and fails and runs[0].status == "succeeded" and fails[0].status == "succeeded":
                    break
                await asyncio.sleep(0.05)
        assert runs[0].outputs == {"got": {"got": "seven"}}
        assert fails[0].outputs is not None and "'seven' is not of type 'number'" in fails[0].outputs["e"]["e"]
        ended = await engine.get_event(engine.owner, runs[0].trigger_data["event"]["id"])
        assert ended.topic == "run.succeeded" and ended.depth == 1
        assert ended.data["task_id"] == str(first) and ended.data["status"] == "succeeded"
        assert failing


async def test_a_chain_that_loops_stops_at_the_documented_depth(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        # Fires on its own success, for ever, were it not for the depth limit.
        loop = await event_task(
            engine,
            "run.succeeded",
            [{"id": "a", "uses": "pao.noop", "with": {}}],
            filter="${event.data.task_id == task.id}",
        )
        # And a second loop through the built-in step.
        echo = await event_task(
            engine, "echo.*", [{"id": "p", "uses": "pao.publish_event", "with": {"topic": "echo.again", "data": {}}}]
        )
        kick = await engine.run_now(engine.owner, loop)
        await publish(engine, "echo.start")
        async with asyncio.timeout(30):
            while True:
                async with db.acquire() as conn:
                    rows = await conn.fetch(
                        "SELECT task_id, status, error FROM runs WHERE status = 'failed' AND task_id = ANY($1)",
                        [loop, echo],
                    )
                if {r["task_id"] for r in rows} == {loop, echo}:
                    break
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # nothing further may happen
        async with db.acquire() as conn:
            counts = {
                r["task_id"]: (r["ok"], r["failed"])
                for r in await conn.fetch(
                    "SELECT task_id, count(*) FILTER (WHERE status = 'succeeded') AS ok,"
                    " count(*) FILTER (WHERE status = 'failed') AS failed FROM runs GROUP BY task_id"
                )
            }
        # run_now, then a run per link up to the limit, then the refused one; filters say which loop.
        assert counts[loop] == (MAX_CHAIN_DEPTH, 1)
        assert counts[echo] == (MAX_CHAIN_DEPTH, 1)
        assert all(f"chains stop at {MAX_CHAIN_DEPTH} links" in r["error"] for r in rows)
        assert kick.id


async def test_event_matching_reads_the_topic_index(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        owner = await conn.fetchval("INSERT INTO agents (name) VALUES ('x') RETURNING id")
        await conn.execute(
            """INSERT INTO tasks (title, schedule_kind, schedule_expr, payload, created_by)
               SELECT 't', 'event', 'other.' || i, '{}'::jsonb, $1 FROM generate_series(1, 5000) i""",
            owner,
        )
        await conn.execute("ANALYZE tasks")
        from pao_orchestrator.store.queries import sql

        # Both statements read the tasks through pao_event_tasks, whose one generic plan probes the index.
        for statement in ("event_tasks_for_patterns", "prepare_event"):
            assert "pao_event_tasks(" in sql(statement)
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        await conn.execute("PREPARE body(text[]) AS SELECT * FROM active_event_tasks WHERE schedule_expr = ANY($1)")
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN EXECUTE body(ARRAY['a.b', 'a.*', '*'])"))
    assert "tasks_event_topic" in plan, plan


async def test_a_publish_writes_its_event_runs_and_audit_entry_together(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        plain = await event_task(engine, "stock.low")
        keyed = await event_task(engine, "stock.*", dedupe_key="${event.data.sku}", dedupe_window_seconds=60)
        first = await publish(engine, "stock.low", {"sku": "a1"})  # two runs: one in the statement, one after it
        again = await publish(engine, "stock.low", {"sku": "a1"})  # the keyed task's run is a skipped duplicate
        same = await publish(engine, "stock.low", {"sku": "a1"}, dedupe_key="k")
        duplicate = await publish(engine, "stock.low", {"sku": "a1"}, dedupe_key="k")
        assert {r.task_id for r in first.runs} == {plain, keyed}
        assert sorted(r.status for r in again.runs) == ["queued", "skipped"]
        assert duplicate.duplicate and duplicate.event_id == same.event_id
        async with db.acquire() as conn:
            rows = await conn.fetch(
                "SELECT target_id, details, agent_name FROM audit_log WHERE action = 'publish_event' ORDER BY id"
            )
            times = await conn.fetch("SELECT id, created_at, matched_at FROM events ORDER BY id")
        assert [(int(r["target_id"]), r["details"]["runs"], r["details"]["duplicate"]) for r in rows] == [
            (first.event_id, 2, False),
            (again.event_id, 2, False),
            (same.event_id, 2, False),
            (same.event_id, 2, True),
        ]
        assert {r["agent_name"] for r in rows} == {engine.owner.name}
        # The time prepare_event reserved is the event's time, and the time it was matched.
        assert [r["id"] for r in times] == [first.event_id, again.event_id, same.event_id]
        assert all(r["created_at"] == r["matched_at"] for r in times)


async def test_a_task_cancelled_between_the_two_statements_of_a_publish_starts_nothing(db: asyncpg.Pool) -> None:
    from pao_orchestrator.store import EventRecord, EventRunBatch, NewAuditEntry
    from pao_orchestrator.store import events as event_store
    from pao_orchestrator.vocabulary import RunStatus

    async with db.acquire() as conn:
        owner = await conn.fetchval("INSERT INTO agents (name) VALUES ('x') RETURNING id")
        await conn.execute(
            """INSERT INTO tasks (title, schedule_kind, schedule_expr, payload, created_by)
               SELECT 't' || i, 'event', 'door.opened', '{}'::jsonb, $1 FROM generate_series(1, 2) i""",
            owner,
        )
        prepared = await event_store.prepare(conn, ["door.opened", "door.*", "*"])
        assert len(prepared.tasks) == 2
        gone = prepared.tasks[0]
        await conn.execute("UPDATE tasks SET status = 'cancelled' WHERE id = $1", gone.id)
        event = EventRecord(prepared.id, "door.opened", {}, None, "test", owner, 0, prepared.created_at)
        batch = EventRunBatch()
        for task in prepared.tasks:
            batch.add(task, RunStatus.QUEUED, {"event": {"id": event.id}}, event.id)
        entry = NewAuditEntry(owner, "x", "publish_event", "event", str(event.id), {"topic": "door.opened"}, None)
        runs = await event_store.store(conn, event, batch, audit=entry)
        assert [r.task_id for r in runs] == [prepared.tasks[1].id]
        assert runs[0].event_id == event.id
        assert await conn.fetchval("SELECT count(*) FROM events WHERE id = $1", event.id) == 1
        details = await conn.fetchval("SELECT details FROM audit_log WHERE target_id = $1", str(event.id))
        assert details == {"topic": "door.opened", "runs": 1}


async def test_every_path_that_ends_a_run_publishes_its_event(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    from pao_orchestrator.store import runs as run_store
    from tests.engine.support import create

    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        task = await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}], max_retries=0)
        await event_task(engine, "run.*")  # run.* events are stored while something can consume them
        cancelled = await engine.run_now(engine.owner, task)
        await engine.cancel_run(engine.owner, cancelled.id)
        expired = await engine.run_now(engine.owner, task)
        async with db.acquire() as conn:
            await conn.execute(
                "UPDATE runs SET status = 'running', lease_owner = 'gone', lease_expires_at = now() - interval '1 s'"
                " WHERE id = $1",
                expired.id,
            )
            await run_store.requeue_expired(conn)
            rows = await conn.fetch("SELECT topic, data, depth FROM events ORDER BY id")
        assert [(r["topic"], r["data"]["run_id"], r["depth"]) for r in rows] == [
            ("run.cancelled", str(cancelled.id), 1),
            ("run.failed", str(expired.id), 1),
        ]
        assert "stopped while running" in rows[1]["data"]["error"]


async def test_a_snoozed_or_paused_event_task_lets_events_pass(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        snoozed = await event_task(engine, "bell.rang")
        paused = await event_task(engine, "bell.rang")
        awake = await event_task(engine, "bell.rang")
        await engine.snooze(engine.owner, snoozed, seconds=3600, until=None)
        await engine.pause_task(engine.owner, paused)
        published = await publish(engine, "bell.rang")
        assert [r.task_id for r in published.runs] == [awake]
        await engine.resume_task(engine.owner, snoozed)
        await engine.resume_task(engine.owner, paused)
        again = await publish(engine, "bell.rang")
        assert {r.task_id for r in again.runs} == {snoozed, paused, awake}


async def test_run_end_events_are_stored_only_while_something_can_consume_them(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    """No task listens for run.* and no Redis relay ran: a run's end stores no event. A relay seen within a
    day, or a listening task, makes the next ones stored."""
    from tests.engine.support import create, wait_run

    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        task = await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}])
        await wait_run(engine, (await engine.run_now(engine.owner, task)).id)
        async with db.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM events") == 0
            await conn.execute("INSERT INTO event_relays (stream) VALUES ('pao:events')")
        relayed = await wait_run(engine, (await engine.run_now(engine.owner, task)).id)
        async with db.acquire() as conn:
            await conn.execute("DELETE FROM event_relays")
            rows = await conn.fetch("SELECT topic, data, matched_at FROM events ORDER BY id")
        # Stored for the relay, and already matched: no task listens.
        assert [(r["topic"], r["data"]["run_id"], r["matched_at"] is not None) for r in rows] == [
            ("run.succeeded", str(relayed.id), True)
        ]
        await event_task(engine, "run.succeeded")
        heard = await wait_run(engine, (await engine.run_now(engine.owner, task)).id)
        async with db.acquire() as conn:
            topics = await conn.fetch("SELECT data->>'run_id' AS run_id FROM events WHERE topic = 'run.succeeded'")
        assert str(heard.id) in {r["run_id"] for r in topics}
