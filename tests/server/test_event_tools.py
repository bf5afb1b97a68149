"""The event tools and resource over a real MCP client session."""

from __future__ import annotations

import json
from pathlib import Path

from mcp import Client

from pao_orchestrator.server.app import create_server
from tests.engine.support import engine_on, wait_run
from tests.server.test_tools import error_text


async def test_publish_list_get_and_the_event_resource(database_url: str, mcp_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine, Client(create_server(engine)) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["publish_event"].annotations.read_only_hint is False  # type: ignore[union-attr]
        for name in ("list_events", "get_event"):
            assert tools[name].annotations.read_only_hint is True  # type: ignore[union-attr]
        for name in ("publish_event", "list_events", "get_event"):
            assert tools[name].output_schema is not None
        # Lean metadata: each costs a client less context than any task or run tool.
        for name in ("publish_event", "list_events", "get_event"):
            size = len(json.dumps(tools[name].model_dump(exclude_none=True)))
            assert size < 3000, (name, size)
        created = await client.call_tool(
            "create_task",
            {
                "title": "greet",
                "schedule_kind": "event",
                "schedule_expr": "user.*",
                "filter": "${event.data.name != 'nobody'}",
                "payload": {
                    "pipeline": [
                        {"id": "a", "uses": "pao.noop", "with": {"hi": "${event.data.name}"}, "save_as": "out"}
                    ]
                },
            },
        )
        assert not created.is_error, created.content
        result = await client.call_tool("publish_event", {"topic": "user.joined", "data": {"name": "ana"}})
        assert not result.is_error, result.content
        published = result.structured_content
        assert published is not None and len(published["runs"]) == 1 and published["duplicate"] is False
        run = await wait_run(engine, published["runs"][0]["run_id"], timeout=15)
        assert run.outputs == {"out": {"hi": "ana"}}
        listed = (await client.call_tool("list_events", {"topic": "user.*"})).structured_content
        assert listed is not None and [e["id"] for e in listed["events"]] == [published["event_id"]]
        got = (await client.call_tool("get_event", {"event_id": published["event_id"]})).structured_content
        assert got is not None and got["runs"][0]["run_id"] == published["runs"][0]["run_id"]
        resource = await client.read_resource(f"pao://events/{published['event_id']}")
        assert json.loads(resource.contents[0].text)["topic"] == "user.joined"  # type: ignore[union-attr]
        text = await error_text(client, "publish_event", {"topic": "user joined", "data": {}})
        assert "topic: 'user joined' is not a topic" in text
        text = await error_text(client, "get_event", {"event_id": 999999})
        assert "event 999999 does not exist" in text
