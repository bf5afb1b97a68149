"""Hostile templates are bounded in time, memory and size, and never stall the event loop.

The templates are the ones that stalled or bloated the worker before: `ljust` of a gigabyte,
doubling a string ten times, nested loops over a million characters, `center` of fifty million.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil
import pytest

from pao_orchestrator.engine import templating
from pao_orchestrator.engine.runtime import Renderer
from tests.engine.support import create, engine_on, wait_run

MEMORY = r"needs more than the 256 MB of memory"
TIME = r"did not finish rendering within 1s"
SIZE = r"larger than 1,048,576 characters"
# template -> the bound it breaks (a regular expression: doubling may meet either bound first)
HOSTILE = {
    "ljust": ("${ 'a'.ljust(10**9) }", MEMORY),
    "doubling": ("${% set a = 'a' * 1000000 %}" + "${% set a = a ~ a %}" * 10 + "${ a | length }", f"{MEMORY}|{TIME}"),
    "nested loops": ("${% for x in 'a' * 1000000 %}${% for y in 'a' * 1000000 %}${% endfor %}${% endfor %}", TIME),
    "center": ("${ 'a' | center(50000000) }", f"{SIZE}|{TIME}"),
}


def context(**secrets: str) -> dict[str, Any]:
    return templating.build_context(
        steps={"a": {"x": 1, "name": "ada"}},
        saved={},
        trigger={"kind": "manual"},
        task={"id": "t", "title": "t"},
        run={"id": "r", "attempt": 1},
        secrets=templating.Secrets({f"PAO_SECRET_{k}": v for k, v in secrets.items()}),
        now=datetime.now(UTC),
    )


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """The longest delays the event loop showed meanwhile (a 10 ms ticker's lateness)."""
    lags: list[float] = []

    async def tick() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(0.01)
            lags.append(loop.time() - before - 0.01)

    ticker = asyncio.create_task(tick())
    try:
        yield lags
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_a_hostile_template_fails_its_render_with_the_bound_it_broke(name: str) -> None:
    template, message = HOSTILE[name]
    renderer = Renderer(processes=1, timeout=1.0, memory_mb=256)
    rss_before = psutil.Process().memory_info().rss
    try:
        async with loop_lag() as lags:
            with pytest.raises(templating.TemplateError, match=message):
                await asyncio.wait_for(renderer.render({"v": template}, context()), timeout=30)
            # The next render gets a healthy process, whatever happened to the last one.
            assert await renderer.render({"v": "${% if 1 %}ok${% endif %}"}, context()) == {"v": "ok"}
    finally:
        await renderer.aclose()
    assert max(lags) < 0.25, max(lags)
    # The worker's own memory did not take the blow.
    assert psutil.Process().memory_info().rss - rss_before < 64 * 1024 * 1024


async def test_simple_templates_render_in_process_and_the_rest_in_a_child() -> None:
    renderer = Renderer(processes=1)
    try:
        plain = {"name": "${steps.a.name | upper}", "x": "${steps.a.x}", "text": "hi ${steps.a.name}!"}
        assert await renderer.render(plain, context()) == {"name": "ADA", "x": 1, "text": "hi ada!"}
        assert renderer.isolated == 0
        looped = {"v": "${% for c in steps.a.name %}${c}-${% endfor %}"}
        assert await renderer.render(looped, context()) == {"v": "a-d-a-"}
        assert renderer.isolated == 1
    finally:
        await renderer.aclose()


async def test_an_isolated_render_reads_secrets_and_reports_them_used_for_redaction() -> None:
    renderer = Renderer(processes=1)
    ctx = context(TOKEN="s3cr3t-value")
    try:
        value = await renderer.render({"auth": "${% for w in ['Bearer'] %}${w}${% endfor %} ${secrets.TOKEN}"}, ctx)
        assert renderer.isolated == 1
        with pytest.raises(templating.TemplateError) as failure:
            await renderer.render({"v": "${% for c in secrets.TOKEN %}${ c | int }${% endfor %}"}, ctx)
    finally:
        await renderer.aclose()
    assert value == {"auth": "Bearer s3cr3t-value"}
    assert ctx["secrets"].used() == {"TOKEN": "s3cr3t-value"}
    assert "s3cr3t-value" not in str(failure.value)


async def test_closing_the_engine_leaves_no_render_process_behind(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, fx_config, tmp_path) as engine:
        task_id = await create(
            engine, [{"id": "a", "uses": "pao.noop", "with": {"v": "${% for c in 'ab' %}${c}${% endfor %}"}}]
        )
        run = await wait_run(engine, (await engine.run_now(engine.owner, task_id)).id)
        assert run.status == "succeeded", run.error
        children = [p for p in psutil.Process().children() if "render_child" in " ".join(p.cmdline())]
        assert children
    await asyncio.to_thread(psutil.wait_procs, children, 10)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in children)


async def test_hostile_runs_do_not_stall_the_worker_healthy_runs_finish_and_leases_hold(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "calls"
    async with engine_on(database_url, fx_config, tmp_path, lease_seconds=1.5) as engine:
        hostile = {
            name: await create(
                engine, [{"id": "h", "uses": "pao.noop", "with": {"v": template}}], title=name, max_retries=0
            )
            for name, (template, _) in HOSTILE.items()
        }
        healthy = await create(
            engine,
            [
                {"id": "wait", "uses": "fx.sleep", "with": {"seconds": 2}},
                {"id": "count", "uses": "fx.count", "with": {"path": str(counter)}},
            ],
            max_retries=3,
        )
        async with loop_lag() as lags:
            healthy_ids = [(await engine.run_now(engine.owner, healthy)).id for _ in range(4)]
            hostile_ids = {name: (await engine.run_now(engine.owner, t)).id for name, t in hostile.items()}
            done = [await wait_run(engine, run_id, timeout=60) for run_id in healthy_ids]
            failed = {name: await wait_run(engine, run_id, timeout=60) for name, run_id in hostile_ids.items()}
    assert max(lags) < 0.25, max(lags)
    # A 1.5 s lease, renewed every 0.5 s, was never lost: each healthy run ran once, side effect once.
    assert [(r.status, r.attempt) for r in done] == [("succeeded", 1)] * 4
    assert len(counter.read_text().splitlines()) == 4
    for name, run in failed.items():
        assert run.status == "failed"
        assert run.error is not None and re.search(HOSTILE[name][1], run.error), run.error
