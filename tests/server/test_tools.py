"""The MCP face, in process: tool names, schemas, annotations and the errors an agent reads."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mcp import Client

from pao_orchestrator.server.app import create_server
from tests.engine.support import engine_on

READS = {"get_task", "list_tasks", "get_run", "list_runs", "list_downstream_tools", "health", "preview_schedule"}
# Overwriting a pipeline or running one (any downstream tool) is not harmless.
DESTRUCTIVE = {"cancel_task", "cancel_run", "update_task", "run_now"}
# Tools that start downstream servers or call their tools.
OPEN_WORLD = {"create_task", "update_task", "run_now", "list_downstream_tools"}
ALL = (
    READS
    | DESTRUCTIVE
    | {
        "create_task",
        "update_task",
        "run_now",
        "snooze",
        "pause_task",
        "resume_task",
    }
)


async def error_text(client: Client, tool: str, arguments: dict[str, Any]) -> str:
    result = await client.call_tool(tool, arguments)
    assert result.is_error, result.structured_content
    text = result.content[0].text  # type: ignore[union-attr]
    assert "Traceback" not in text
    return str(text)


async def test_every_tool_has_an_output_schema_and_the_right_annotations(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with (
        engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine,
        Client(create_server(engine)) as client,
    ):
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= ALL
    for name in ALL:
        tool = tools[name]
        assert tool.output_schema is not None, name
        assert tool.description and len(tool.description) >= 15, name
        assert tool.description == tool.description.strip() and "\n    " not in tool.description, name
        assert tool.title, name
        assert tool.annotations is not None, name
        assert tool.annotations.read_only_hint is (name in READS), name
        assert bool(tool.annotations.destructive_hint) is (name in DESTRUCTIVE), name
        assert bool(tool.annotations.open_world_hint) is (name in OPEN_WORLD), name
        assert tool.input_schema.get("additionalProperties") is False, name
        for arg, prop in tool.input_schema.get("properties", {}).items():
            assert name == "update_task" or prop.get("description"), (name, arg)
    schema = tools["create_task"].input_schema
    assert set(schema["required"]) == {"title", "schedule_kind", "schedule_expr", "payload"}
    assert schema["properties"]["priority"]["maximum"] == 9
    assert schema["properties"]["timezone"]["default"] == "Europe/Chisinau"


async def test_bad_arguments_name_the_field_and_how_to_fix_it(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    base = {
        "title": "t",
        "schedule_kind": "cron",
        "schedule_expr": "30 8 * * *",
        "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {}}]},
    }
    async with (
        engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine,
        Client(create_server(engine)) as client,
    ):
        text = await error_text(client, "create_task", {**base, "schedule_expr": "0 25 * * *"})
        assert "schedule_expr" in text and "'25'" in text and "0..23" in text
        text = await error_text(client, "create_task", {**base, "timezone": "Mars/Base"})
        assert "timezone" in text and "Mars/Base" in text and "IANA" in text
        text = await error_text(
            client, "create_task", {**base, "schedule_kind": "once", "schedule_expr": "2020-01-01T00:00:00Z"}
        )
        assert "in the past" in text
        text = await error_text(
            client,
            "create_task",
            {**base, "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"x": "${steps.later.y}"}}]}},
        )
        assert "payload.pipeline[0].with" in text and "later" in text
        text = await error_text(client, "get_task", {"task_id": "00000000-0000-0000-0000-000000000000"})
        assert "does not exist" in text and "list_tasks" in text
        # Said as plainly as an argument error: no "Error executing tool get_task:" in front.
        assert text.startswith("task 00000000-0000-0000-0000-000000000000 does not exist"), text
        listed = await client.call_tool("list_tasks", {})
    assert listed.structured_content == {"tasks": [], "next_cursor": None}


async def test_arguments_are_strict_and_text_postgres_cannot_hold_is_refused_by_path(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    base = {
        "title": "t",
        "schedule_kind": "cron",
        "schedule_expr": "30 8 * * *",
        "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {}}]},
    }

    def payload(value: object) -> dict[str, object]:
        return {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"v": value}}]}

    async with (
        engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine,
        Client(create_server(engine)) as client,
    ):
        for bad in ("5", True, 5.0):
            text = await error_text(client, "create_task", {**base, "priority": bad})
            assert "priority" in text and "integer" in text, text
        text = await error_text(client, "create_task", {**base, "title": "a\x00b"})
        assert "title: contains a NUL character" in text, text
        text = await error_text(client, "create_task", {**base, "payload": payload("a\x00b")})
        assert "payload.pipeline[0].with.v: contains a NUL character" in text, text
        text = await error_text(client, "list_tasks", {"limit": "5"})
        assert "limit" in text, text
        text = await error_text(
            client,
            "preview_schedule",
            {
                "schedule_kind": "rrule",
                "schedule_expr": "FREQ=MINUTELY;INTERVAL=10080;BYDAY=TU",  # weekly, from a Monday
                "timezone": "UTC",
                "after": "2026-03-02T00:00:00Z",
            },
        )
        assert "has no fire within 10 years" in text, text
        listed = await client.call_tool("list_tasks", {})
    assert listed.structured_content == {"tasks": [], "next_cursor": None}
