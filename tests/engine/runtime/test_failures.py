"""Failure handling per task: on_failure steps, pause_after_failures, and resume_task clearing the pause."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from uuid import UUID

import pytest

from pao_orchestrator.engine import Engine, Run, Task
from pao_orchestrator.errors import InvalidArgument
from tests.engine.support import create, engine_on, wait_run


def lines(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def run_once(engine: Engine, task_id: UUID) -> Run:
    return await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)


async def paused_soon(engine: Engine, task_id: UUID) -> Task:
    """The pause check runs in its own transaction just after the failed run's end is recorded, so a
    reader may see the run failed a moment before the task paused: wait for it, within a bound."""
    deadline = asyncio.get_running_loop().time() + 10
    while (task := await engine.get_task(engine.owner, task_id)).status != "paused":
        assert asyncio.get_running_loop().time() < deadline, f"task still {task.status} 10 s after its failures"
        await asyncio.sleep(0.02)
    return task


FAILING = {"id": "work", "uses": "fx.fail", "with": {"message": "the API said no"}}


async def test_on_failure_steps_run_once_when_the_run_fails_for_good_with_its_error_and_id(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    alerts, flaky, healthy_alerts = tmp_path / "alerts", tmp_path / "flaky", tmp_path / "healthy"
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        failing = await engine_create(
            engine,
            {
                "pipeline": [{"id": "first", "uses": "pao.noop", "with": {"x": 1}}, FAILING],
                "on_failure": [
                    {
                        "id": "alert",
                        "uses": "fx.record",
                        "with": {
                            "path": str(alerts),
                            "value": "run ${run.id} failed: ${run.error} (x=${steps.first.x})",
                        },
                    }
                ],
            },
            max_retries=2,
            backoff_strategy="none",
        )
        # A run that fails twice, then succeeds: its on_failure never runs.
        recovering = await engine_create(
            engine,
            {
                "pipeline": [{"id": "f", "uses": "fx.flaky", "with": {"path": str(flaky), "fail_times": 2}}],
                "on_failure": [
                    {"id": "alert", "uses": "fx.record", "with": {"path": str(healthy_alerts), "value": "x"}}
                ],
            },
            max_retries=2,
            backoff_strategy="none",
        )
        failed = await run_once(engine, failing)
        recovered = await run_once(engine, recovering)
    assert failed.status == "failed" and failed.attempt == 3
    assert lines(alerts) == [f"run {failed.id} failed: {failed.error} (x=1)"]
    assert (failed.error or "").startswith("step 'work' (fx.fail) failed: fx.fail returned an error")
    assert failed.reason == "failed after 3 attempt(s); on_failure: 1 step(s) ran"
    alert = [s for s in failed.steps if s.step_id == "alert"]
    assert [(s.status, s.attempt, s.step_index) for s in alert] == [("succeeded", 3, 2)]
    assert recovered.status == "succeeded" and not healthy_alerts.exists()


async def engine_create(engine: Engine, payload: dict[str, object], **fields: object) -> UUID:
    arguments = {
        "title": "t",
        "schedule_kind": "once",
        "schedule_expr": "2099-01-01T00:00:00Z",
        "payload": payload,
        **fields,
    }
    return (await engine.create_task(engine.owner, arguments)).task.id


async def test_a_failing_on_failure_step_is_recorded_and_the_next_one_still_runs(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    second = tmp_path / "second"
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await engine_create(
            engine,
            {
                "pipeline": [FAILING],
                "on_failure": [
                    {"id": "broken", "uses": "fx.fail", "with": {"message": "the alert channel is down"}},
                    {"id": "fallback", "uses": "fx.record", "with": {"path": str(second), "value": "${run.error}"}},
                ],
            },
            max_retries=0,
        )
        run = await run_once(engine, task_id)
    assert run.status == "failed"
    assert (run.error or "").startswith("step 'work' (fx.fail) failed")
    assert run.reason == "failed after 1 attempt(s); on_failure: 1 of 2 step(s) failed (broken)"
    assert {s.step_id: s.status for s in run.steps} == {"work": "failed", "broken": "failed", "fallback": "succeeded"}
    assert lines(second) == [run.error]


async def test_on_failure_is_checked_before_saving(database_url: str, fx_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        bad = [
            ({"id": "a", "uses": "nope.tool", "with": {}}, "payload.on_failure[0].uses"),
            ({"id": "a", "uses": "pao.noop", "with": {"v": "${steps.later.x}"}}, "payload.on_failure[0].with.v"),
            ({"id": "work", "uses": "pao.noop", "with": {}}, "name 'work' is used twice"),
        ]
        for step, expected in bad:
            with pytest.raises(InvalidArgument) as caught:
                await engine_create(
                    engine,
                    {"pipeline": [FAILING], "on_failure": [step, {"id": "later", "uses": "pao.noop", "with": {}}]},
                )
            assert expected in str(caught.value)
        # Reading the pipeline's steps and ${run.error} is fine.
        await engine_create(
            engine,
            {
                "pipeline": [FAILING],
                "on_failure": [{"id": "a", "uses": "pao.noop", "with": {"e": "${run.error}", "w": "${steps.work}"}}],
            },
        )
        async with engine.db.acquire() as conn:
            tasks = await conn.fetchval("SELECT count(*) FROM tasks")
    assert tasks == 1


async def test_pause_after_failures_pauses_after_n_in_a_row_and_resume_clears_it(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    flip = tmp_path / "flip"
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        failing = await create(engine, [FAILING], max_retries=0, pause_after_failures=2)
        # One that fails every other run never has two failures in a row: it stays active.
        alternating = await create(
            engine,
            [{"id": "f", "uses": "fx.flaky", "with": {"path": str(flip), "fail_times": 1}}],
            max_retries=0,
            pause_after_failures=2,
        )
        healthy = await create(engine, [{"id": "ok", "uses": "pao.noop", "with": {}}], pause_after_failures=1)

        first = await run_once(engine, failing)
        assert first.status == "failed"
        assert (await engine.get_task(engine.owner, failing)).status == "active"
        await run_once(engine, failing)
        paused = await paused_soon(engine, failing)
        assert paused.status == "paused"
        assert paused.paused_reason is not None and "after 2 consecutive failed run(s)" in paused.paused_reason
        assert paused.paused_at is not None

        assert (await run_once(engine, alternating)).status == "failed"
        assert (await run_once(engine, alternating)).status == "succeeded"
        assert (await run_once(engine, alternating)).status == "succeeded"
        assert (await engine.get_task(engine.owner, alternating)).status == "active"
        for _ in range(3):
            assert (await run_once(engine, healthy)).status == "succeeded"
        assert (await engine.get_task(engine.owner, healthy)).status == "active"

        resumed = await engine.resume_task(engine.owner, failing)
        assert resumed.task.status == "active"
        assert resumed.task.paused_reason is None and resumed.task.paused_at is None
        # The count starts again: one more failure is not two in a row.
        await run_once(engine, failing)
        assert (await engine.get_task(engine.owner, failing)).status == "active"
        await run_once(engine, failing)
        assert (await paused_soon(engine, failing)).status == "paused"

        manual = await engine.pause_task(engine.owner, healthy)
    assert manual.task.paused_reason == f"paused by {engine.owner.name} (pause_task)"
    assert manual.task.paused_at is not None


async def died_on_its_last_attempt(engine: Engine, task_id: UUID, *, failing: str | None = None) -> UUID:
    """A run whose worker died on its last attempt: running, its lease expired, no attempts left, the
    first step done and the second left running."""
    run = await engine.run_now(engine.owner, task_id)
    async with engine.db.acquire() as conn:
        await conn.execute(
            """UPDATE runs SET status = 'running', lease_owner = 'gone-1', started_at = now(),
                   lease_expires_at = now() - interval '1 s', attempt = max_attempts, failing = $2
               WHERE id = $1""",
            run.id,
            failing,
        )
        await conn.execute(
            """INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input, output)
               SELECT $1, attempt, 0, 'fetch', 'pao.noop', 'succeeded', '{}'::jsonb, '{"got": 42}'::jsonb
               FROM runs WHERE id = $1
               UNION ALL
               SELECT $1, attempt, 1, 'send', 'pao.sleep', 'running', '{}'::jsonb, NULL FROM runs WHERE id = $1""",
            run.id,
        )
    return run.id


async def test_a_run_whose_worker_died_on_its_last_attempt_still_runs_on_failure(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await engine_create(
            engine,
            {
                "pipeline": [
                    {"id": "fetch", "uses": "pao.noop", "with": {"got": 42}},
                    {"id": "send", "uses": "pao.sleep", "with": {"seconds": 60}},
                ],
                "on_failure": [
                    {"id": "alert", "uses": "pao.noop", "with": {"why": "${run.error}", "got": "${steps.fetch.got}"}}
                ],
            },
            max_retries=1,
        )
        run_id = await died_on_its_last_attempt(engine, task_id)
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        run = await wait_run(engine, run_id, timeout=30)
    assert run.status == "failed"
    assert run.attempt == 2  # no attempt was spent on the on_failure steps
    assert run.error == "worker gone-1 stopped while running this run, and no attempts are left"
    assert "on_failure: 1 step(s) ran" in (run.reason or "")
    steps = {(s.step_id, s.status) for s in run.steps}
    assert ("send", "abandoned") in steps and ("alert", "succeeded") in steps
    alert = next(s for s in run.steps if s.step_id == "alert")
    assert alert.input == {"why": run.error, "got": 42}  # the dead attempt's outputs are offered to on_failure


async def test_a_run_that_died_again_in_its_on_failure_steps_fails_without_looping(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await engine_create(
            engine,
            {
                "pipeline": [
                    {"id": "fetch", "uses": "pao.noop", "with": {}},
                    {"id": "send", "uses": "pao.sleep", "with": {"seconds": 1}},
                ],
                "on_failure": [{"id": "alert", "uses": "pao.noop", "with": {}}],
            },
            max_retries=0,
        )
        run_id = await died_on_its_last_attempt(engine, task_id, failing="worker gone-0 stopped while running this run")
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        run = await wait_run(engine, run_id, timeout=30)
    assert run.status == "failed"
    assert run.error == (
        "worker gone-0 stopped while running this run; worker gone-1 stopped while running this run while its "
        "on_failure steps ran"
    )
    assert "did not finish" in (run.reason or "")
    assert "alert" not in {s.step_id for s in run.steps}


async def test_a_run_failed_by_its_dead_worker_counts_toward_pause_after_failures(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(
            engine,
            [
                {"id": "fetch", "uses": "pao.noop", "with": {}},
                {"id": "send", "uses": "pao.sleep", "with": {"seconds": 1}},
            ],
            max_retries=0,
            pause_after_failures=1,
        )
        run_id = await died_on_its_last_attempt(engine, task_id)
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        run = await wait_run(engine, run_id, timeout=30)
        assert run.status == "failed" and "no attempts left" in (run.reason or "")
        task = await paused_soon(engine, task_id)
    assert "1 consecutive failed run" in (task.paused_reason or "")
