"""Worker processes that die, stop or lose their database: nothing is lost, nothing completes twice."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID

import asyncpg
import pytest

from pao_orchestrator.store import EmbeddedPostgres, migrate
from tests.conftest import embedded_data_dir
from tests.engine.support import create, engine_on, wait_run

LEASE = "1.5"


def start_worker(database_url: str, mcp_config: Path, tmp_path: Path, name: str, **env: str) -> subprocess.Popen[bytes]:
    environ = {
        **os.environ,
        "DATABASE_URL": database_url,
        "PAO_MCP_CONFIG": str(mcp_config),
        "PAO_DATA_DIR": str(tmp_path / "data"),
        "PAO_LEASE_SECONDS": LEASE,
        **env,
    }
    with open(tmp_path / f"{name}.log", "wb") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [sys.executable, "-m", "pao_orchestrator.server.cli", "worker", "--concurrency", "4"],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=tmp_path,
        )


@pytest.fixture
def workers() -> Iterator[list[subprocess.Popen[bytes]]]:
    procs: list[subprocess.Popen[bytes]] = []
    yield procs
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)


def calls(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


async def test_kill_9_mid_run_another_worker_takes_over_after_the_lease(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    first, last = tmp_path / "first", tmp_path / "last"
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(
            engine,
            [
                {"id": "first", "uses": "fx.count", "with": {"path": str(first)}},
                {"id": "wait", "uses": "fx.sleep", "with": {"seconds": 2}},
                {"id": "last", "uses": "fx.count", "with": {"path": str(last)}},
            ],
            max_retries=3,
        )
        workers.append(start_worker(database_url, fx_config, tmp_path, "w1"))
        run_id = (await engine.run_now(engine.owner, task_id)).id
        # Killed inside the 2 s step: "first" is recorded, "wait" shows as running.
        async with asyncio.timeout(30):
            while ("wait", "running") not in {
                (s.step_id, s.status) for s in (await engine.get_run(engine.owner, run_id)).steps
            }:
                await asyncio.sleep(0.05)
        assert calls(first) == 1
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=10)
        assert (await engine.get_run(engine.owner, run_id)).status == "running"

        workers.append(start_worker(database_url, fx_config, tmp_path, "w2"))
        run = await wait_run(engine, run_id, timeout=60)
    assert run.status == "succeeded", run.error
    assert run.attempt == 2
    # The step that had finished is not called again; the one in flight is re-run; the run finishes once.
    assert (calls(first), calls(last)) == (1, 1)
    assert [(s.attempt, s.step_id, s.status) for s in run.steps if s.status == "succeeded"] == [
        (1, "first", "succeeded"),
        (2, "wait", "succeeded"),
        (2, "last", "succeeded"),
    ]


async def test_kill_9_on_the_last_attempt_still_runs_on_failure_once(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    first, alerts = tmp_path / "first", tmp_path / "alerts"
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        created = await engine.create_task(
            engine.owner,
            {
                "title": "dies on its only attempt",
                "schedule_kind": "once",
                "schedule_expr": "2099-01-01T00:00:00Z",
                "max_retries": 0,
                "payload": {
                    "pipeline": [
                        {"id": "first", "uses": "fx.count", "with": {"path": str(first)}},
                        {"id": "wait", "uses": "fx.sleep", "with": {"seconds": 30}},
                    ],
                    "on_failure": [{"id": "alert", "uses": "fx.count", "with": {"path": str(alerts)}}],
                },
            },
        )
        workers.append(start_worker(database_url, fx_config, tmp_path, "w1"))
        run_id = (await engine.run_now(engine.owner, created.task.id)).id
        async with asyncio.timeout(30):
            while ("wait", "running") not in {
                (s.step_id, s.status) for s in (await engine.get_run(engine.owner, run_id)).steps
            }:
                await asyncio.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=10)
        workers.append(start_worker(database_url, fx_config, tmp_path, "w2"))
        run = await wait_run(engine, run_id, timeout=60)
    assert run.status == "failed"
    assert run.error is not None and "stopped while running this run, and no attempts are left" in run.error
    assert (calls(first), calls(alerts)) == (1, 1)  # the pipeline is not re-run; on_failure runs once
    assert {(s.step_id, s.status) for s in run.steps} == {
        ("first", "succeeded"),
        ("wait", "abandoned"),
        ("alert", "succeeded"),
    }


async def test_sigterm_lets_the_running_step_finish_then_exits(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(engine, [{"id": "wait", "uses": "pao.sleep", "with": {"seconds": 1}}])
        workers.append(start_worker(database_url, fx_config, tmp_path, "w1"))
        run_id = (await engine.run_now(engine.owner, task_id)).id
        await wait_run(engine, run_id, statuses=frozenset({"running"}))
        workers[0].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(workers[0].wait, 20) == 0
        run = await engine.get_run(engine.owner, run_id)
    assert run.status == "succeeded"


async def test_sigterm_releases_runs_that_outlast_the_grace_period(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(engine, [{"id": "wait", "uses": "pao.sleep", "with": {"seconds": 60}}])
        workers.append(start_worker(database_url, fx_config, tmp_path, "w1", PAO_SHUTDOWN_GRACE_SECONDS="0.5"))
        run_id = (await engine.run_now(engine.owner, task_id)).id
        await wait_run(engine, run_id, statuses=frozenset({"running"}))
        workers[0].send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(workers[0].wait, 20) == 0
        run = await engine.get_run(engine.owner, run_id)
    assert run.status == "queued"
    assert run.attempt == 1
    assert "released by worker" in (run.reason or "")


async def test_runs_survive_a_worker_killed_under_load_and_none_completes_twice(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(
            engine,
            [
                {"id": "work", "uses": "pao.sleep", "with": {"seconds": 0.2}},
                {"id": "done", "uses": "pao.noop", "with": {}},
            ],
            max_retries=5,
        )
        workers.append(start_worker(database_url, fx_config, tmp_path, "w1"))
        workers.append(start_worker(database_url, fx_config, tmp_path, "w2"))
        run_ids = [(await engine.run_now(engine.owner, task_id)).id for _ in range(40)]
        async with engine.db.acquire() as conn:
            async with asyncio.timeout(30):
                while await conn.fetchval("SELECT count(*) FROM runs WHERE status = 'succeeded'") < 8:
                    await asyncio.sleep(0.05)
        workers[0].send_signal(signal.SIGKILL)
        workers.append(start_worker(database_url, fx_config, tmp_path, "w3"))
        runs = [await wait_run(engine, run_id, timeout=90) for run_id in run_ids]
        async with engine.db.acquire() as conn:
            completions = await conn.fetch(
                "SELECT run_id, count(*) AS n FROM run_steps"
                " WHERE step_id = 'done' AND status = 'succeeded' GROUP BY run_id"
            )
    assert {r.status for r in runs} == {"succeeded"}
    assert {row["run_id"] for row in completions} == set(run_ids)
    assert max(row["n"] for row in completions) == 1


async def test_postgres_restart_under_load_loses_nothing(fx_config: Path, tmp_path: Path) -> None:
    with embedded_data_dir() as data_dir:
        await restart_under_load(EmbeddedPostgres(data_dir), fx_config, tmp_path)


async def restart_under_load(pg: EmbeddedPostgres, fx_config: Path, tmp_path: Path) -> None:
    url = pg.start()
    try:
        conn = await asyncpg.connect(url)
        await migrate(conn)
        await conn.close()
        async with engine_on(url, fx_config, tmp_path, lease_seconds=1.5) as engine:
            task_id = await create(
                engine,
                [
                    {"id": "work", "uses": "pao.sleep", "with": {"seconds": 0.05}},
                    {"id": "done", "uses": "pao.noop", "with": {}},
                ],
                max_retries=5,
            )
            run_ids: list[UUID] = [(await engine.run_now(engine.owner, task_id)).id for _ in range(30)]
            await asyncio.to_thread(pg.restart)
            async with asyncio.timeout(30):
                while len(run_ids) < 60:
                    try:
                        run_ids.append((await engine.run_now(engine.owner, task_id)).id)
                    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                        await asyncio.sleep(0.1)
            runs = []
            for run_id in run_ids:
                async with asyncio.timeout(90):
                    while True:
                        try:
                            runs.append(await wait_run(engine, run_id, timeout=90))
                            break
                        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
                            await asyncio.sleep(0.1)
    finally:
        pg.stop()
    assert len(runs) == 60
    assert {r.status for r in runs} == {"succeeded"}, [
        (r.id, r.status, r.error) for r in runs if r.status != "succeeded"
    ]


async def test_a_worker_stopped_past_its_lease_makes_no_call_and_no_write_when_it_continues(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    counter = tmp_path / "calls"
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(
            engine,
            [
                {"id": "wait", "uses": "fx.sleep", "with": {"seconds": 2}},
                {"id": "count", "uses": "fx.count", "with": {"path": str(counter)}},
            ],
            max_retries=3,
        )
        workers.append(start_worker(database_url, fx_config, tmp_path, "stale"))
        run_id = (await engine.run_now(engine.owner, task_id)).id
        async with asyncio.timeout(30):
            while not any(
                s.step_id == "wait" and s.status == "running"
                for s in (await engine.get_run(engine.owner, run_id)).steps
            ):
                await asyncio.sleep(0.05)
        workers[0].send_signal(signal.SIGSTOP)  # frozen mid-step, past its lease
        try:
            workers.append(start_worker(database_url, fx_config, tmp_path, "live"))
            run = await wait_run(engine, run_id, timeout=60)
            assert run.status == "succeeded", run.error
            assert calls(counter) == 1
            async with engine.db.acquire() as conn:
                before = [dict(r) for r in await conn.fetch("SELECT * FROM run_steps ORDER BY id")]
        finally:
            workers[0].send_signal(signal.SIGCONT)
        # The stale worker wakes up, its 'wait' call answers, and it finds it no longer holds the run.
        async with asyncio.timeout(30):
            while "lease lost" not in (tmp_path / "stale.log").read_text():
                await asyncio.sleep(0.05)
        async with engine.db.acquire() as conn:
            after = [dict(r) for r in await conn.fetch("SELECT * FROM run_steps ORDER BY id")]
            final = await engine.get_run(engine.owner, run_id)
    assert calls(counter) == 1  # the downstream side effect happened once
    assert after == before  # and no row was rewritten after the run had finished
    assert (final.status, final.finished_at) == (run.status, run.finished_at)


async def test_the_steps_a_killed_worker_left_running_are_closed_as_abandoned(
    database_url: str, fx_config: Path, tmp_path: Path, workers: list[subprocess.Popen[bytes]]
) -> None:
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        task_id = await create(engine, [{"id": "wait", "uses": "fx.sleep", "with": {"seconds": 2}}], max_retries=3)
        workers.append(start_worker(database_url, fx_config, tmp_path, "w1"))
        run_id = (await engine.run_now(engine.owner, task_id)).id
        async with asyncio.timeout(30):
            while not any(s.status == "running" for s in (await engine.get_run(engine.owner, run_id)).steps):
                await asyncio.sleep(0.05)
        async with engine.db.acquire() as conn:
            owner = await conn.fetchval("SELECT lease_owner FROM runs WHERE id = $1", run_id)
        workers[0].send_signal(signal.SIGKILL)
        workers[0].wait(timeout=10)
        workers.append(start_worker(database_url, fx_config, tmp_path, "w2"))
        run = await wait_run(engine, run_id, timeout=60)
    assert run.status == "succeeded" and run.attempt == 2
    assert [(s.attempt, s.status) for s in run.steps] == [(1, "abandoned"), (2, "succeeded")]
    dead = run.steps[0]
    assert dead.finished_at is not None
    assert dead.error == (
        f"worker {owner} stopped heartbeating (its lease expired) while this step ran; "
        "the run was re-queued as attempt 2"
    )
