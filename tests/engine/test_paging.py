"""list_tasks and list_runs page newest first with a cursor the agent passes back."""

from __future__ import annotations

from pathlib import Path

import pytest

from pao_orchestrator.errors import InvalidArgument
from tests.engine.support import create, engine_on


async def test_tasks_and_runs_page_newest_first_until_the_cursor_runs_out(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        ids = [await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}], title=f"t{i}") for i in range(3)]
        first, cursor = await engine.list_tasks(engine.owner, status=None, schedule_kind=None, limit=2, cursor=None)
        assert cursor is not None
        second, end = await engine.list_tasks(engine.owner, status=None, schedule_kind=None, limit=2, cursor=cursor)
        runs = [(await engine.run_now(engine.owner, ids[0])).id for _ in range(3)]
        run_page, run_cursor = await engine.list_runs(engine.owner, task_id=ids[0], status=None, limit=2, cursor=None)
        run_rest, run_end = await engine.list_runs(
            engine.owner, task_id=ids[0], status=None, limit=2, cursor=run_cursor
        )
        with pytest.raises(InvalidArgument, match="cursor"):
            await engine.list_runs(engine.owner, task_id=None, status=None, limit=2, cursor="not-a-cursor")
    # Tasks made within one second share created_at (their schedule anchor); pages still cover each once.
    listed = [t.id for t in first + second]
    assert len(listed) == 3 and set(listed) == set(ids)
    assert end is None
    assert [r.id for r in run_page + run_rest] == runs[::-1]
    assert run_end is None
