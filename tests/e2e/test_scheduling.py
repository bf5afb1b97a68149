"""Scheduling over stdio: `pao serve` fires a task by itself; the life-cycle tools and preview_schedule."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import anyio
from mcp import Client

from tests.e2e.test_stdio import call, server_params

NOOP = {"pipeline": [{"id": "tick", "uses": "pao.noop", "with": {"at": "${trigger.scheduled_for}"}}]}


async def test_a_per_second_cron_fires_by_itself_and_the_life_cycle_tools_control_it(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    with anyio.fail_after(90):
        async with Client(server_params(database_url, mcp_config, tmp_path)) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            names = {"update_task", "snooze", "pause_task", "resume_task", "cancel_task", "preview_schedule"}
            assert names <= set(tools)
            assert all(tools[n].output_schema is not None for n in names)
            cancel = tools["cancel_task"].annotations
            assert cancel is not None and cancel.destructive_hint
            preview = tools["preview_schedule"].annotations
            assert preview is not None and preview.read_only_hint

            created = await call(
                client,
                "create_task",
                {"title": "tick", "schedule_kind": "cron", "schedule_expr": "* * * * * *", "payload": NOOP},
            )
            task_id = created["task"]["id"]
            with anyio.fail_after(15):
                while True:
                    runs = (await call(client, "list_runs", {"task_id": task_id, "status": "succeeded"}))["runs"]
                    if len(runs) >= 2:
                        break
                    await anyio.sleep(0.2)
            for run in runs:
                scheduled = datetime.fromisoformat(run["scheduled_for"])
                assert run["trigger"] == "schedule" and scheduled.microsecond == 0
                assert datetime.fromisoformat(run["started_at"]) >= scheduled

            paused = await call(client, "pause_task", {"task_id": task_id})
            assert paused["changed"] and paused["task"]["status"] == "paused"
            assert not (await call(client, "pause_task", {"task_id": task_id}))["changed"]

            snoozing = await client.call_tool("snooze", {"task_id": task_id, "seconds": 60})
            assert snoozing.is_error and "resume_task" in snoozing.content[0].text  # type: ignore[union-attr]

            updated = await call(client, "update_task", {"task_id": task_id, "title": "renamed", "priority": 2})
            assert updated["task"]["title"] == "renamed" and updated["task"]["status"] == "paused"
            bad = await client.call_tool("update_task", {"task_id": task_id, "schedule_expr": "* * * 13 *"})
            assert bad.is_error and "schedule_expr" in bad.content[0].text  # type: ignore[union-attr]

            resumed = await call(client, "resume_task", {"task_id": task_id})
            assert resumed["task"]["status"] == "active"
            cancelled = await call(client, "cancel_task", {"task_id": task_id})
            assert cancelled["task"]["status"] == "cancelled" and cancelled["task"]["next_fires"] == []


async def test_preview_schedule_over_stdio_returns_exact_instants_across_the_chisinau_gap(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with Client(server_params(database_url, mcp_config, tmp_path)) as client:
            preview = await call(
                client,
                "preview_schedule",
                {
                    "schedule_kind": "rrule",
                    "schedule_expr": "FREQ=DAILY;BYHOUR=2;BYMINUTE=30",
                    "timezone": "Europe/Chisinau",
                    "count": 3,
                    "after": "2026-03-27T12:00:00Z",
                },
            )
            assert [f["at"] for f in preview["fires"]] == [
                "2026-03-28T02:30:00+02:00",
                "2026-03-29T03:30:00+03:00",
                "2026-03-30T02:30:00+03:00",
            ]
            assert [f["utc"] for f in preview["fires"]][1] == "2026-03-29T00:30:00Z"
            bad = await client.call_tool(
                "preview_schedule",
                {"schedule_kind": "cron", "schedule_expr": "30 8 * *", "timezone": "Europe/Chisinau"},
            )
            assert bad.is_error and "schedule_expr" in bad.content[0].text  # type: ignore[union-attr]
