"""Events end to end: an agent over stdio (`pao serve`) publishes, and a second task chains on the first."""

from __future__ import annotations

from pathlib import Path

import anyio
from mcp import Client

from tests.e2e.test_stdio import call, server_params, wait_for_run


async def test_publish_over_stdio_starts_a_run_and_its_end_starts_the_next(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    params = server_params(database_url, mcp_config, tmp_path)
    with anyio.fail_after(90):
        async with Client(params) as client:
            first = await call(
                client,
                "create_task",
                {
                    "title": "on order",
                    "schedule_kind": "event",
                    "schedule_expr": "shop.order.*",
                    "payload": {
                        "pipeline": [
                            {"id": "now", "uses": "time.get_current_time", "with": {"timezone": "UTC"}},
                            {"id": "o", "uses": "pao.noop", "with": {"order": "${event.data.id}"}, "save_as": "o"},
                        ]
                    },
                },
            )
            then = await call(
                client,
                "create_task",
                {
                    "title": "after the order",
                    "schedule_kind": "event",
                    "schedule_expr": "run.succeeded",
                    "filter": "${event.data.task_id == '" + first["task"]["id"] + "'}",
                    "payload": {
                        "pipeline": [{"id": "n", "uses": "pao.noop", "with": {"got": "${event.data.outputs.o.order}"}}]
                    },
                },
            )
            published = await call(client, "publish_event", {"topic": "shop.order.paid", "data": {"id": 42}})
            run = await wait_for_run(client, published["runs"][0]["run_id"])
            assert run["status"] == "succeeded", run
            while True:
                chained = await call(client, "list_runs", {"task_id": then["task"]["id"]})
                if chained["runs"] and chained["runs"][0]["status"] == "succeeded":
                    break
                await anyio.sleep(0.1)
            got = await call(client, "get_run", {"run_id": chained["runs"][0]["id"]})
            assert got["steps"][0]["output"] == {"got": 42}
