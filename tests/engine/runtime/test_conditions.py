"""Condition tasks: edge-triggered firing, failed probes, probe state, and two replicas probing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any
from uuid import UUID

import asyncpg
import pytest

from pao_orchestrator.engine import Engine
from pao_orchestrator.engine.runtime import Prober
from pao_orchestrator.errors import InvalidArgument
from tests.engine.support import engine_on


async def condition_task(engine: Engine, probe: dict[str, Any], when: str, **fields: Any) -> UUID:
    created = await engine.create_task(
        engine.owner,
        {
            "title": "watch",
            "schedule_kind": "condition",
            "schedule_expr": "PT1H",
            "probe": probe,
            "when": when,
            "payload": {
                "pipeline": [{"id": "a", "uses": "pao.noop", "with": {"r": "${condition.result}"}, "save_as": "got"}]
            },
            **fields,
        },
    )
    return created.task.id


async def make_due(db: asyncpg.Pool) -> None:
    async with db.acquire() as conn:
        await conn.execute(
            "UPDATE tasks SET next_fire_at = now() - interval '1 second' WHERE schedule_kind = 'condition'"
        )


async def runs(db: asyncpg.Pool, task_id: UUID) -> list[asyncpg.Record]:
    async with db.acquire() as conn:
        return await conn.fetch("SELECT * FROM runs WHERE task_id = $1 ORDER BY created_at", task_id)


async def test_fires_on_the_edge_only_and_a_failed_probe_is_not_false(
    database_url: str, fx_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    sensor = tmp_path / "sensor.json"
    sensor.write_text("1")
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task = await condition_task(engine, {"uses": "fx.reading", "with": {"path": str(sensor)}}, "${probe.value > 5}")
        quiet = await condition_task(engine, {"uses": "pao.noop", "with": {"v": 0}}, "${probe.v > 0}")
        prober = Prober(engine.db, engine.tools, secrets={})

        async def step(value: Any) -> dict[str, Any]:
            sensor.write_text(value if isinstance(value, str) else json.dumps(value))
            await make_due(db)
            assert await prober.probe_due() == 2
            state = (await engine.get_task(engine.owner, task)).probe_state
            assert state is not None
            return state

        state = await step(1)
        assert state["holds"] is False and state["value"] == {"value": 1} and state["error"] is None
        assert await runs(db, task) == []
        state = await step(10)
        assert state["holds"] is True and len(await runs(db, task)) == 1
        await step(11)  # still true: no new run
        assert len(await runs(db, task)) == 1
        state = await step("fail")  # an error is not "false": the next true is no edge
        assert "the sensor failed" in state["error"] and state["holds"] is True and state["failures"] == 1
        async with db.acquire() as conn:
            retry_in = await conn.fetchval(
                "SELECT extract(epoch FROM next_fire_at - now()) FROM tasks WHERE id = $1", task
            )
        assert 0 < retry_in <= 2.5  # retried soon, not in an hour
        await step(12)
        assert len(await runs(db, task)) == 1
        await step(3)
        state = await step(7)
        assert state["holds"] is True
        fired = await runs(db, task)
        assert len(fired) == 2
        assert [r["trigger"] for r in fired] == ["condition", "condition"]
        assert [r["trigger_data"]["condition"]["result"] for r in fired] == [{"value": 10}, {"value": 7}]
        # A quiet probe leaves no run rows, only its state.
        assert await runs(db, quiet) == []
        assert (await engine.get_task(engine.owner, quiet)).probe_state["holds"] is False  # type: ignore[index]


async def test_the_pipeline_reads_the_condition_result(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        task = await condition_task(engine, {"uses": "pao.noop", "with": {"n": 3}}, "${probe.n == 3}")
        await make_due(db)
        async with asyncio.timeout(15):
            while not (done := [r for r in await runs(db, task) if r["status"] == "succeeded"]):
                await asyncio.sleep(0.05)
        assert done[0]["outputs"] == {"got": {"r": {"n": 3}}}


async def test_two_replicas_never_probe_one_condition_twice(
    database_url: str, fx_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        tasks = [
            await condition_task(
                engine, {"uses": "fx.count", "with": {"path": str(tmp_path / "${task.id}")}}, "${probe.calls > 100}"
            )
            for _ in range(12)
        ]
        replicas = [Prober(engine.db, engine.tools, secrets={}, batch=5) for _ in range(2)]
        for _ in range(3):
            await make_due(db)
            claimed = 0
            while True:
                counts = await asyncio.gather(*(r.probe_due() for r in replicas))
                claimed += sum(counts)
                if not any(counts):
                    break
            assert claimed == len(tasks)
        calls = {t: len((tmp_path / str(t)).read_text().splitlines()) for t in tasks}
        assert set(calls.values()) == {3}, calls


async def test_condition_fields_are_checked_when_saved(database_url: str, mcp_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        noop = {"uses": "pao.noop", "with": {}}
        with pytest.raises(InvalidArgument, match="when: "):
            await condition_task(engine, noop, "${steps.a}")
        with pytest.raises(InvalidArgument, match=r"probe\.uses"):
            await condition_task(engine, {"uses": "nowhere.tool"}, "${probe.x}")
        with pytest.raises(InvalidArgument, match="needs a when"):
            await engine.create_task(
                engine.owner,
                {
                    "title": "t",
                    "schedule_kind": "condition",
                    "schedule_expr": "PT1M",
                    "probe": noop,
                    "payload": {"pipeline": [{"id": "a", "uses": "pao.noop"}]},
                },
            )
        task = await condition_task(engine, noop, "${probe.x is defined}")
        moved = await engine.update_task(engine.owner, task, {"schedule_kind": "event", "schedule_expr": "a.b"})
        assert moved.task.probe is None and moved.task.when is None


async def test_conditions_created_together_probe_at_instants_spread_over_the_interval(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        for _ in range(40):
            await condition_task(engine, {"uses": "pao.noop", "with": {}}, "${probe.x is defined}")
        async with db.acquire() as conn:
            spread = await conn.fetchrow(
                "SELECT count(DISTINCT next_fire_at) AS distinct_instants,"
                " extract(epoch FROM max(next_fire_at) - min(next_fire_at)) AS seconds,"
                " extract(epoch FROM max(next_fire_at) - now()) AS last_in FROM tasks"
            )
    assert spread["distinct_instants"] == 40
    assert spread["seconds"] > 1800 and spread["last_in"] <= 3600  # over half of the 1 h interval, within it


async def test_a_task_that_cannot_be_probed_does_not_hold_up_the_others(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        broken = await condition_task(engine, {"uses": "pao.noop", "with": {"v": 1}}, "${probe.v == 1}")
        good = await condition_task(engine, {"uses": "pao.noop", "with": {"v": 1}}, "${probe.v == 1}")
        async with db.acquire() as conn:
            await conn.execute("UPDATE tasks SET timezone = 'Mars/Olympus_Mons' WHERE id = $1", broken)
        await make_due(db)
        assert await Prober(engine.db, engine.tools, secrets={}).probe_due() == 2
        assert (await engine.get_task(engine.owner, good)).probe_state["holds"] is True  # type: ignore[index]
        assert len(await runs(db, good)) == 1
        assert await runs(db, broken) == []
        async with db.acquire() as conn:
            leased_for = await conn.fetchval(
                "SELECT extract(epoch FROM next_fire_at - now()) FROM tasks WHERE id = $1", broken
            )
        assert 30 < leased_for <= 41  # tried again when its lease (probe timeout + margin) ends
