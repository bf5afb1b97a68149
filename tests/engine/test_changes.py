"""The change feed: what the database triggers announce, in batches, and what they leave out."""

from __future__ import annotations

import asyncio
from pathlib import Path

from pao_orchestrator.contracts import CHANGES_CHANNEL
from pao_orchestrator.engine import Change
from pao_orchestrator.vocabulary import ChangeKind
from tests.engine.support import create, engine_on


async def settle(seen: list[Change], count: int, timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while len(seen) < count:
            await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)  # and nothing more arrives


async def test_one_statement_on_many_runs_is_heard_as_each_run_and_heartbeats_are_silent(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        assert engine.changes is not None
        seen: list[Change] = []
        engine.changes.subscribe(seen.append)
        assert await engine.changes.ready()
        task_id = await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}])
        await settle(seen, 1)
        assert [c.kind for c in seen] == [ChangeKind.TASK_CREATED] and seen[0].id == task_id
        seen.clear()
        async with engine.db.acquire() as conn:
            ids = await conn.fetch(
                "INSERT INTO runs (task_id, trigger, status) SELECT $1, 'manual', 'skipped' "
                "FROM generate_series(1, 400) RETURNING id",
                task_id,
            )
            await settle(seen, 400)
            assert sorted(c.id for c in seen) == sorted(r["id"] for r in ids)
            assert {c.kind for c in seen} == {ChangeKind.RUN}
            seen.clear()
            # Neither a heartbeat nor a write of the same values is a change.
            await conn.execute("UPDATE runs SET lease_expires_at = now() WHERE task_id = $1", task_id)
            await conn.execute("UPDATE tasks SET title = title WHERE id = $1", task_id)
            # A malformed payload is ignored; the feed goes on.
            await conn.execute("SELECT pg_notify($1, 'run:not-a-uuid')", CHANGES_CHANNEL)
            await asyncio.sleep(0.3)
            assert seen == []
            await conn.execute("UPDATE runs SET reason = 'x' WHERE id = $1", ids[0]["id"])
            await conn.execute("DELETE FROM tasks WHERE id = $1", task_id)
        await settle(seen, 2)
        assert seen[0] == Change(ChangeKind.RUN, ids[0]["id"])
        assert ChangeKind.TASK_DELETED in {c.kind for c in seen}


def test_payloads_parse_into_changes() -> None:
    run = "0b7c4cde-4a0b-4bb4-9b1c-0f0b6ad4e6a1"
    assert Change.parse(f"step:{run}:fetch,{run}:send") == [
        Change(ChangeKind.STEP, Change.parse(f"run:{run}")[0].id, "fetch"),  # type: ignore[index]
        Change(ChangeKind.STEP, Change.parse(f"run:{run}")[0].id, "send"),  # type: ignore[index]
    ]
    assert Change.parse("nope:1") is None
    assert Change.parse(f"run:{run},garbage") is None
