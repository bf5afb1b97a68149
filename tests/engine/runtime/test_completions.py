"""A run that cannot be stored fails alone: the other runs finishing in its batch commit, once."""

from __future__ import annotations

from pathlib import Path
from uuid import UUID

import pytest

from pao_orchestrator.engine import Engine, Run
from tests.engine.support import create, engine_on, wait_run


def calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def queued_runs(engine: Engine, task_id: UUID, count: int) -> list[UUID]:
    return [(await engine.run_now(engine.owner, task_id)).id for _ in range(count)]


async def finish_together(
    database_url: str, fx_config: Path, tmp_path: Path, bad_last_step: dict[str, object], innocent: int = 30
) -> tuple[list[Run], Run, Path]:
    """`innocent` runs and one bad run, claimed in one go, their last steps answering at the same moment."""
    counter = tmp_path / "first-step-calls"
    first = {"id": "count", "uses": "fx.count", "with": {"path": str(counter)}}
    align = {"id": "align", "uses": "pao.sleep", "with": {"seconds": 0.5}}
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as setup:
        good_task = await create(
            setup, [first, align, {"id": "last", "uses": "fx.echo", "with": {"message": "ok"}}], max_retries=3
        )
        bad_task = await create(setup, [first, align, bad_last_step], max_retries=3)
        good_ids = await queued_runs(setup, good_task, innocent)
        bad_id = (await setup.run_now(setup.owner, bad_task)).id
    async with engine_on(database_url, fx_config, tmp_path, worker_concurrency=innocent + 5) as engine:
        good = [await wait_run(engine, run_id, timeout=60) for run_id in good_ids]
        bad = await wait_run(engine, bad_id, timeout=60)
    return good, bad, counter


@pytest.mark.parametrize(
    ("kind", "cause"),
    [
        ("nul", "contains a NUL character at text, which Postgres text cannot hold"),
        ("nan", "contains NaN at value; JSON in Postgres holds only finite numbers"),
        ("surrogate", "contains a lone surrogate (half a UTF-16 pair) at text"),
    ],
)
async def test_an_output_postgres_cannot_hold_fails_its_run_alone_and_no_innocent_run_runs_again(
    database_url: str, fx_config: Path, tmp_path: Path, kind: str, cause: str
) -> None:
    bad_step = {"id": "last", "uses": "fx.output", "with": {"kind": kind}}
    good, bad, counter = await finish_together(database_url, fx_config, tmp_path, bad_step)
    assert [(r.status, r.attempt) for r in good] == [("succeeded", 1)] * len(good)
    # Each run called its first step once: nothing was re-executed.
    assert calls(counter) == len(good) + 1
    assert all(len([s for s in r.steps if s.step_id == "count"]) == 1 for r in good)
    assert (bad.status, bad.attempt) == ("failed", 1)
    assert bad.error is not None and cause in bad.error, bad.error
    assert "fx.output returned an output that" in bad.error


async def test_a_batch_postgres_refuses_is_written_run_by_run_and_only_the_refused_run_fails(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as setup:
        task_id = await create(setup, [{"id": "a", "uses": "pao.noop", "with": {"v": 1}}], max_retries=3)
        run_ids = await queued_runs(setup, task_id, 20)
        async with setup.db.acquire() as conn:
            # Postgres refuses to record this one run as succeeded (what no check before the batch saw).
            await conn.execute(
                f"""
                CREATE FUNCTION refuse_end() RETURNS trigger LANGUAGE plpgsql AS $$
                BEGIN
                    IF NEW.id = '{run_ids[7]}' AND NEW.status = 'succeeded' THEN
                        RAISE EXCEPTION 'value refused' USING ERRCODE = '22000';
                    END IF;
                    RETURN NEW;
                END $$;
                CREATE TRIGGER refuse_end BEFORE UPDATE ON runs FOR EACH ROW EXECUTE FUNCTION refuse_end();
                """
            )
    async with engine_on(database_url, fx_config, tmp_path, worker_concurrency=32) as engine:
        runs = [await wait_run(engine, run_id, timeout=60) for run_id in run_ids]
        async with engine.db.acquire() as conn:
            steps = await conn.fetchval("SELECT count(*) FROM run_steps")
    bad = runs.pop(7)
    assert [(r.status, r.attempt) for r in runs] == [("succeeded", 1)] * 19
    assert (bad.status, bad.attempt) == ("failed", 1)
    assert bad.error is not None and "could not be stored: value refused" in bad.error
    assert steps == 19  # one step record per innocent run, none for the refused end
