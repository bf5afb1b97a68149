"""Prometheus metrics: what they count, /metrics over HTTP, --metrics-port for a worker; checked by promtool."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.engine.support import create, engine_on, wait_run
from tests.server.serving import create_agent, free_port, pao, wait_healthy


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample by (name, sorted labels); parsing also proves the text is valid exposition format."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def promtool_check(text: str) -> None:
    """`promtool check metrics` when promtool is installed (the Debian package prometheus)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        return
    done = subprocess.run([promtool, "check", "metrics"], input=text.encode(), capture_output=True, timeout=30)
    assert done.returncode == 0, done.stdout.decode() + done.stderr.decode()


async def test_metrics_count_runs_steps_servers_claims_and_the_queue(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        good = await create(engine, [{"id": "e", "uses": "fx.echo", "with": {"message": "hi"}}])
        bad = await create(engine, [{"id": "f", "uses": "fx.fail", "with": {"message": "no"}}], max_retries=0)
        for task_id in (good, good, bad):
            await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
        # A run that stays queued (far in the future is not due; this one is due but no worker takes it).
        async with engine.db.acquire() as conn:
            await conn.execute(
                "UPDATE runs SET status = 'queued', available_at = now() - interval '42 seconds', "
                "finished_at = NULL WHERE task_id = $1",
                bad,
            )
            await conn.execute("UPDATE tasks SET status = 'paused' WHERE id = $1", bad)
            # An event waiting 90 s for a relay to mirror it to Redis (none runs here).
            event_id = await conn.fetchval("INSERT INTO events (topic, data) VALUES ('lag.test', '{}') RETURNING id")
            await conn.execute(
                "INSERT INTO event_outbox (event_id, created_at) VALUES ($1, now() - interval '90 seconds') "
                "ON CONFLICT (event_id) DO UPDATE SET created_at = excluded.created_at",
                event_id,
            )
        assert engine.worker is not None
        await engine.worker.stop(0)
        text = (await engine.metrics_exposition()).decode()
    found = samples(text)
    assert found[("pao_runs_total", (("status", "succeeded"), ("trigger", "manual")))] == 2
    assert found[("pao_runs_total", (("status", "failed"), ("trigger", "manual")))] == 1
    assert found[("pao_step_duration_seconds_count", (("status", "succeeded"), ("uses", "fx.echo")))] == 2
    assert found[("pao_step_duration_seconds_count", (("status", "failed"), ("uses", "fx.fail")))] == 1
    assert found[("pao_downstream_up", (("server", "fx"),))] == 1
    assert found[("pao_downstream_restarts_total", (("server", "fx"),))] == 0
    assert found[("pao_claim_latency_seconds_count", ())] >= 1
    assert found[("pao_fire_lateness_seconds_count", (("trigger", "manual"),))] == 3
    assert found[("pao_scheduler_pass_seconds_count", ())] >= 1
    assert found[("pao_queue_depth", ())] == 1
    assert 41 < found[("pao_queue_oldest_due_age_seconds", ())] < 120
    assert 89 < found[("pao_relay_lag_seconds", ())] < 200
    promtool_check(text)


async def test_a_restarted_downstream_server_is_counted(database_url: str, fx_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        crash = await create(
            engine,
            [{"id": "c", "uses": "fx.crash_once", "with": {"path": str(tmp_path / "c")}}],
            backoff_strategy="none",
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, crash)).id)
        text = (await engine.metrics_exposition()).decode()
    assert run.status == "succeeded" and run.attempt == 2
    found = samples(text)
    assert found[("pao_downstream_restarts_total", (("server", "fx"),))] == 1
    assert found[("pao_downstream_up", (("server", "fx"),))] == 1
    assert found[("pao_run_retries_total", ())] == 1


def fetch(url: str, proc: subprocess.Popen[bytes], timeout: float = 60, token: str | None = None) -> tuple[str, str]:
    deadline = time.monotonic() + timeout
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=5) as response:
                return response.read().decode(), response.headers["Content-Type"]
        except urllib.error.HTTPError:
            raise
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"pao exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(url)


@pytest.mark.parametrize("mode", ["http", "worker"])
async def test_metrics_endpoint_over_http_and_on_a_worker_metrics_port(
    database_url: str, tmp_path: Path, mcp_config: Path, mode: str
) -> None:
    port = free_port()
    token: str | None = None
    if mode == "http":
        # Behind auth, /metrics needs a token like every route but the health checks.
        token = await asyncio.to_thread(create_agent, database_url, tmp_path, mcp_config, "scraper", "tasks:read")
        args, url = ["serve", "--transport", "http", "--port", str(port)], f"http://127.0.0.1:{port}/metrics"
    else:
        args, url = ["worker", "--metrics-port", str(port)], f"http://127.0.0.1:{port}/metrics"
    proc = pao(args, database_url, tmp_path, mcp_config)
    try:
        if token is not None:
            await asyncio.to_thread(wait_healthy, proc, f"http://127.0.0.1:{port}")
            with pytest.raises(urllib.error.HTTPError) as refused:
                await asyncio.to_thread(fetch, url, proc)
            refused.value.close()
            assert refused.value.code == 401
        text, content_type = await asyncio.to_thread(fetch, url, proc, 60, token)
    finally:
        proc.terminate()
        await asyncio.to_thread(proc.wait, 30)
        assert proc.stdout is not None
        proc.stdout.close()
    assert content_type.startswith("text/plain")
    found = samples(text)
    assert found[("pao_queue_depth", ())] == 0
    assert ("pao_scheduler_pass_seconds_count", ()) in found
    promtool_check(text)
    assert proc.returncode == 0
