"""Run execution against real Postgres and real downstream servers: retries, errors, cancel, secrets."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

from pao_orchestrator.engine import Run
from tests.engine.support import create, engine_on, wait_run


def calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def attempts_of(run: Run) -> dict[int, list[tuple[str, str]]]:
    out: dict[int, list[tuple[str, str]]] = {}
    for step in run.steps:
        out.setdefault(step.attempt, []).append((step.step_id, step.status))
    return out


async def test_retry_resumes_at_the_failed_step_without_calling_earlier_steps_again(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [
                {"id": "first", "uses": "fx.count", "with": {"path": str(a)}},
                {"id": "flaky", "uses": "fx.flaky", "with": {"path": str(b), "fail_times": 2}},
                {"id": "last", "uses": "fx.count", "with": {"path": str(c)}, "save_as": "result"},
            ],
            max_retries=3,
            backoff_strategy="none",
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
    assert run.status == "succeeded", run.error
    assert run.attempt == 3
    assert (calls(a), calls(b), calls(c)) == (1, 3, 1)
    assert attempts_of(run) == {
        1: [("first", "succeeded"), ("flaky", "failed")],
        2: [("flaky", "failed")],
        3: [("flaky", "succeeded"), ("last", "succeeded")],
    }
    assert run.outputs == {"result": {"calls": 1}}
    failed = next(s for s in run.steps if s.status == "failed")
    assert "fx.flaky returned an error" in (failed.error or "") and "failing call 1 of 2" in (failed.error or "")


async def test_retries_exhausted_fail_the_run_with_the_last_error(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [{"id": "flaky", "uses": "fx.flaky", "with": {"path": str(tmp_path / "f"), "fail_times": 99}}],
            max_retries=2,
            backoff_strategy="none",
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
    assert run.status == "failed"
    assert run.attempt == 3
    assert run.reason == "failed after 3 attempt(s)"
    assert "failing call 3 of 99" in (run.error or "")


async def test_backoff_holds_the_next_attempt_back(database_url: str, fx_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [{"id": "flaky", "uses": "fx.flaky", "with": {"path": str(tmp_path / "f"), "fail_times": 1}}],
            max_retries=1,
            backoff_strategy="fixed",
            backoff_base_seconds=120,
        )
        run_id = (await engine.run_now(engine.owner, task_id)).id
        async with asyncio.timeout(30):
            while (run := await engine.get_run(engine.owner, run_id)).attempt < 2:
                await asyncio.sleep(0.05)
        assert run.status == "queued"
        assert "retrying in 120.0s (fixed)" in (run.reason or "")
        wait = (run.available_at - datetime.now(UTC)).total_seconds()
        assert 100 < wait <= 120
        # Time passes in SQL, not by sleeping: the retry becomes due and runs.
        async with engine.db.acquire() as conn:
            await conn.execute("UPDATE runs SET available_at = now() WHERE id = $1", run_id)
            await conn.execute("SELECT pg_notify('pao_runs', '')")
        run = await wait_run(engine, run_id)
    assert run.status == "succeeded"
    assert run.attempt == 2


async def test_errors_that_cannot_succeed_on_retry_fail_at_once(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        template_error = await create(
            engine,
            [
                {"id": "a", "uses": "pao.noop", "with": {"x": 1}},
                {"id": "b", "uses": "pao.noop", "with": {"y": "${steps.a.nope}"}},
            ],
            max_retries=5,
        )
        bad_arguments = await create(
            engine,
            [
                {"id": "a", "uses": "pao.noop", "with": {"x": "soon"}},
                {"id": "b", "uses": "fx.sleep", "with": {"seconds": "${steps.a.x}"}},
            ],
            max_retries=5,
        )
        runs = [
            await wait_run(engine, (await engine.run_now(engine.owner, t)).id) for t in (template_error, bad_arguments)
        ]
    for run in runs:
        assert run.status == "failed"
        assert run.attempt == 1
        assert run.reason == "failed without retry: this error cannot succeed on a retry"
    assert "has no field 'nope'" in (runs[0].error or "") or "nope" in (runs[0].error or "")
    assert "fx.sleep: invalid arguments at seconds" in (runs[1].error or "")


async def test_downstream_crash_mid_step_is_retried_on_a_restarted_server(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [{"id": "c", "uses": "fx.crash_once", "with": {"path": str(tmp_path / "c")}}],
            max_retries=2,
            backoff_strategy="none",
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
    assert run.status == "succeeded", run.error
    first = run.steps[0]
    assert first.attempt == 1 and first.status == "failed"
    assert "fx" in (first.error or "") and "not running" in (first.error or "")
    assert run.steps[-1].output == {"calls": 2}


async def test_a_hung_step_times_out_with_a_retryable_error_naming_the_server(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [{"id": "h", "uses": "fx.sleep", "with": {"seconds": 30}, "timeout_seconds": 0.5}],
            max_retries=1,
            backoff_strategy="none",
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id, timeout=60)
    assert run.status == "failed"
    assert run.attempt == 2
    assert "'fx'" in (run.error or "") and "within 0.5s" in (run.error or "")


async def test_cancel_run_stops_a_running_run_between_steps(database_url: str, fx_config: Path, tmp_path: Path) -> None:
    marker = tmp_path / "after"
    # A long lease keeps the heartbeat out of it: the cancel must arrive by NOTIFY, within the 1 s step.
    async with engine_on(database_url, fx_config, tmp_path, lease_seconds=60) as engine:
        task_id = await create(
            engine,
            [
                {"id": "wait", "uses": "pao.sleep", "with": {"seconds": 1}},
                {"id": "after", "uses": "fx.count", "with": {"path": str(marker)}},
            ],
        )
        run_id = (await engine.run_now(engine.owner, task_id)).id
        await wait_run(engine, run_id, statuses=frozenset({"running"}))
        flagged = await engine.cancel_run(engine.owner, run_id)
        assert flagged.status == "running"
        run = await wait_run(engine, run_id)
        assert run.status == "cancelled"
        assert [s.step_id for s in run.steps] == ["wait"]
        assert calls(marker) == 0
        again = await engine.cancel_run(engine.owner, run_id)
        assert again.status == "cancelled"


async def test_cancel_run_cancels_a_queued_run_at_once(database_url: str, fx_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}])
        run_id = (await engine.run_now(engine.owner, task_id)).id
        cancelled = await engine.cancel_run(engine.owner, run_id)
    assert cancelled.status == "cancelled"
    assert cancelled.finished_at is not None


async def test_secrets_resolve_from_pao_secret_only_and_never_reach_storage(
    database_url: str, fx_config: Path, tmp_path: Path, monkeypatch: object
) -> None:
    import pytest

    assert isinstance(monkeypatch, pytest.MonkeyPatch)
    monkeypatch.setenv("PAO_SECRET_API_TOKEN", "s3cr3t-value-42")
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [{"id": "e", "uses": "fx.echo", "with": {"message": "token=${secrets.API_TOKEN}"}, "save_as": "echoed"}],
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
        async with engine.db.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM run_steps WHERE input::text LIKE '%s3cr3t%' OR output::text LIKE '%s3cr3t%'"
            )
    assert run.status == "succeeded", run.error
    assert run.steps[0].input == {"message": "token=***"}
    assert "s3cr3t" not in run.model_dump_json()
    assert stored == 0


async def test_a_long_step_shows_as_running_while_a_quick_one_costs_a_single_write(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine,
            [
                {"id": "quick", "uses": "fx.echo", "with": {"message": "hi"}},
                {"id": "slow", "uses": "fx.sleep", "with": {"seconds": 1.5}},
            ],
        )
        run_id = (await engine.run_now(engine.owner, task_id)).id
        async with asyncio.timeout(30):
            while not any(
                s.step_id == "slow" and s.status == "running"
                for s in (await engine.get_run(engine.owner, run_id)).steps
            ):
                await asyncio.sleep(0.05)
        in_flight = await engine.get_run(engine.owner, run_id)
        run = await wait_run(engine, run_id)
    assert [(s.step_id, s.status) for s in in_flight.steps] == [("quick", "succeeded"), ("slow", "running")]
    assert in_flight.steps[1].input == {"seconds": 1.5}
    assert run.status == "succeeded"
    assert [(s.step_id, s.status) for s in run.steps] == [("quick", "succeeded"), ("slow", "succeeded")]
    assert run.steps[1].duration_ms is not None and run.steps[1].duration_ms >= 1500


def lines(path: Path) -> list[str]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def test_a_secret_a_tool_echoes_reaches_later_steps_masked_even_across_a_retry(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    received = tmp_path / "received"
    secret = "s3cr3t-value-42"
    async with engine_on(database_url, fx_config, tmp_path, environ={"PAO_SECRET_TOKEN": secret}) as engine:
        task_id = await create(
            engine,
            [
                {"id": "hdr", "uses": "fx.echo", "with": {"message": "Bearer ${secrets.TOKEN}"}},
                {
                    "id": "send",
                    "uses": "fx.record",
                    # A later step may transform what an earlier one returned: it only ever sees ***.
                    "with": {"path": str(received), "value": "${steps.hdr.message | reverse}", "fail_times": 1},
                },
            ],
            max_retries=2,
            backoff_strategy="none",
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
        async with engine.db.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM run_steps WHERE concat(input, output, output_sealed, error) LIKE $1",
                f"%{secret}%",
            )
            runs_stored = await conn.fetchval(
                "SELECT count(*) FROM runs WHERE concat(outputs, error, reason) LIKE $1", f"%{secret}%"
            )
    assert run.status == "succeeded", run.error
    assert run.attempt == 2
    assert [(s.attempt, s.step_id) for s in run.steps] == [(1, "hdr"), (1, "send"), (2, "send")]
    assert lines(received) == ["*** reraeB", "*** reraeB"]
    assert run.steps[0].output == {"message": "Bearer ***"}
    assert (stored, runs_stored) == (0, 0)


async def test_an_output_with_a_secret_in_a_key_fails_its_step_and_stores_nothing_of_it(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    secret = "s3cr3t-value-42"
    async with engine_on(database_url, fx_config, tmp_path, environ={"PAO_SECRET_TOKEN": secret}) as engine:
        task_id = await create(engine, [{"id": "k", "uses": "fx.echo_key", "with": {"message": "${secrets.TOKEN}"}}])
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
        async with engine.db.acquire() as conn:
            stored = await conn.fetchval(
                "SELECT count(*) FROM run_steps WHERE concat(input, output, error) LIKE $1", f"%{secret}%"
            )
    assert run.status == "failed"
    assert "a secret's value in an object key (in output.echoed)" in (run.error or "")
    assert stored == 0


async def test_an_output_over_the_size_limit_fails_its_step_and_is_not_stored(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, max_value_bytes=100_000) as engine:
        task_id = await create(
            engine, [{"id": "big", "uses": "fx.output", "with": {"kind": "big", "size": 200_000}}], max_retries=3
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
    assert (run.status, run.attempt) == ("failed", 1)
    assert "fx.output returned an output that is larger than 100,000 characters of JSON" in (run.error or "")
    assert run.steps[0].output is None


async def test_rendered_arguments_postgres_cannot_hold_fail_the_step_before_the_call(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine, [{"id": "c", "uses": "fx.count", "with": {"path": str(counter) + "${ '\\u0000' }"}}]
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
    assert run.status == "failed"
    assert "fx.count: the rendered 'with' contains a NUL character at path" in (run.error or "")
    assert calls(counter) == 0
