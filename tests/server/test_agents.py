"""Agents, tokens, isolation and the audit log, through the MCP tools (in process) and the engine."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from mcp import Client

from pao_orchestrator.engine import Agent, Engine
from pao_orchestrator.errors import NotFound, PermissionDenied
from pao_orchestrator.server.app import create_server
from tests.engine.support import engine_on, task_args, wait_run

NOOP = [{"id": "a", "uses": "pao.noop", "with": {"v": 1}}]


async def agent(engine: Engine, name: str, scopes: list[str], **fields: Any) -> tuple[Agent, str]:
    created = await engine.create_agent(engine.owner, name=name, scopes=scopes, **fields)
    found = await engine.authenticate(created.token)
    assert found is not None
    return found, created.token


def content(result: Any) -> dict[str, Any]:
    assert not result.is_error, result.content
    return dict(result.structured_content)


async def test_tokens_are_random_hashed_revocable_and_expire(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        alice, token = await agent(engine, "alice", ["tasks:read"])
        _, other = await agent(engine, "bob", ["tasks:read"])
        assert token != other and len(token) > 60
        async with engine.db.acquire() as conn:
            stored = json.dumps([dict(r) for r in await conn.fetch("SELECT * FROM agent_tokens")], default=str)
            audit = json.dumps([dict(r) for r in await conn.fetch("SELECT * FROM audit_log")], default=str)
        secret_part = token[36:]
        assert secret_part not in stored and token not in stored and token not in audit
        # A wrong secret with a real token id, a truncated token, junk: nobody.
        assert await engine.authenticate(token[:-1] + ("A" if token[-1] != "A" else "B")) is None
        assert await engine.authenticate(token[:40]) is None
        assert await engine.authenticate("pao_" + "z" * 100) is None
        # Rotation: a second token, then the first revoked.
        rotated = await engine.update_agent(engine.owner, alice.id, new_token=True)
        assert rotated.token is not None and await engine.authenticate(rotated.token) is not None
        first = (await engine.get_agent(engine.owner, alice.id)).tokens[0]
        await engine.update_agent(engine.owner, alice.id, revoke_token_id=first.id)
        assert await engine.authenticate(token) is None
        assert await engine.authenticate(rotated.token) is not None
        # Expiry: a token past its expires_at authenticates as nobody.
        short = await engine.create_agent(engine.owner, name="brief", scopes=["tasks:read"], expires_in_seconds=60)
        assert await engine.authenticate(short.token) is not None
        async with engine.db.acquire() as conn:
            await conn.execute(
                "UPDATE agent_tokens SET expires_at = now() - interval '1 second' WHERE id = $1", short.token_id
            )
        assert await engine.authenticate(short.token) is None
        info = await engine.get_agent(engine.owner, short.agent.id)
        assert [t.active for t in info.tokens] == [False]


async def test_admin_tools_manage_agents_and_deleting_keeps_history(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path) as engine, Client(create_server(engine)) as owner:
        made = content(
            await owner.call_tool("create_agent", {"name": "worker-1", "scopes": ["tasks:write", "runs:write"]})
        )
        agent_id, token = made["agent"]["id"], made["token"]
        assert made["agent"]["scopes"] == ["runs:write", "tasks:write"]
        dup = await owner.call_tool("create_agent", {"name": "worker-1", "scopes": []})
        assert dup.is_error and "already exists" in dup.content[0].text  # type: ignore[union-attr]
        bad = await owner.call_tool("create_agent", {"name": "x", "scopes": ["root"]})
        assert bad.is_error
        worker = await engine.authenticate(token)
        assert worker is not None
        async with Client(create_server(engine, caller=worker)) as as_worker:
            task = content(await as_worker.call_tool("create_task", task_args(NOOP)))["task"]
            run_id = content(await as_worker.call_tool("run_now", {"task_id": task["id"]}))["run_id"]
        await wait_run(engine, run_id)
        assert task["created_by"] == agent_id
        updated = content(await owner.call_tool("update_agent", {"agent_id": agent_id, "scopes": ["tasks:read"]}))
        assert updated["agent"]["scopes"] == ["tasks:read"] and updated["token"] is None
        deleted = content(await owner.call_tool("delete_agent", {"agent_id": agent_id}))
        assert deleted["deleted_at"] is not None and not any(t["active"] for t in deleted["tokens"])
        again = content(await owner.call_tool("delete_agent", {"agent_id": agent_id}))
        assert again["deleted_at"] == deleted["deleted_at"]
        assert await engine.authenticate(token) is None
        # Its history stays readable: the agent, its task, its run and its audit entries.
        assert content(await owner.call_tool("get_agent", {"agent_id": agent_id}))["name"] == "worker-1"
        assert content(await owner.call_tool("get_task", {"task_id": task["id"]}))["created_by"] == agent_id
        assert content(await owner.call_tool("get_run", {"run_id": run_id}))["status"] == "succeeded"
        history = content(await owner.call_tool("list_audit", {"agent_id": agent_id}))["entries"]
        assert {e["action"] for e in history} == {"create_task", "run_now"}
        assert all(e["agent_name"] == "worker-1" and e["request_id"] for e in history)
        listed = content(await owner.call_tool("list_agents", {}))["agents"]
        assert agent_id not in {a["id"] for a in listed}
        everyone = content(await owner.call_tool("list_agents", {"include_deleted": True}))["agents"]
        assert agent_id in {a["id"] for a in everyone}
        reads = content(await owner.call_tool("list_audit", {"action": "get_agent"}))["entries"]
        assert [(e["agent_name"], e["target_id"]) for e in reads] == [("owner", agent_id)]  # admin reads too
        refused = await owner.call_tool("delete_agent", {"agent_id": str(engine.owner.id)})
        assert refused.is_error and "cannot be deleted" in refused.content[0].text  # type: ignore[union-attr]


async def test_an_agent_sees_and_changes_only_its_own_tasks_and_runs(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    everything = ["tasks:read", "tasks:write", "runs:read", "runs:write"]
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        alice, _ = await agent(engine, "alice", everything)
        bob, _ = await agent(engine, "bob", everything)
        async with Client(create_server(engine, caller=alice)) as a, Client(create_server(engine, caller=bob)) as b:
            mine = content(await a.call_tool("create_task", task_args(NOOP, title="alice's")))["task"]
            theirs = content(await b.call_tool("create_task", task_args(NOOP, title="bob's")))["task"]
            run_id = content(await a.call_tool("run_now", {"task_id": mine["id"]}))["run_id"]
            await wait_run(engine, run_id)
            missing_task = "00000000-0000-4000-8000-000000000000"
            for tool, arguments in [
                ("get_task", {"task_id": mine["id"]}),
                ("update_task", {"task_id": mine["id"], "title": "stolen"}),
                ("pause_task", {"task_id": mine["id"]}),
                ("resume_task", {"task_id": mine["id"]}),
                ("snooze", {"task_id": mine["id"], "seconds": 60}),
                ("cancel_task", {"task_id": mine["id"]}),
                ("run_now", {"task_id": mine["id"]}),
            ]:
                other = await b.call_tool(tool, arguments)
                absent = await b.call_tool(tool, {**arguments, "task_id": missing_task})
                assert other.is_error and absent.is_error, tool
                text = other.content[0].text.replace(mine["id"], "ID")  # type: ignore[union-attr]
                assert text == absent.content[0].text.replace(missing_task, "ID"), tool  # type: ignore[union-attr]
            for tool in ("get_run", "cancel_run"):
                other = await b.call_tool(tool, {"run_id": run_id})
                absent = await b.call_tool(tool, {"run_id": missing_task})
                assert other.is_error and "does not exist" in other.content[0].text, tool  # type: ignore[union-attr]
                assert other.content[0].text.replace(run_id, "ID") == absent.content[0].text.replace(  # type: ignore[union-attr]
                    missing_task, "ID"
                )
            assert [t["id"] for t in content(await b.call_tool("list_tasks", {}))["tasks"]] == [theirs["id"]]
            assert content(await b.call_tool("list_runs", {}))["runs"] == []
            assert content(await b.call_tool("list_runs", {"task_id": mine["id"]}))["runs"] == []
            assert [r["id"] for r in content(await a.call_tool("list_runs", {}))["runs"]] == [run_id]
            # created_by comes from the caller, never from arguments.
            forged = await b.call_tool("create_task", {**task_args(NOOP), "created_by": str(alice.id)})
            # Refused as an argument create_task does not take.
            assert forged.is_error and "created_by" in forged.content[0].text  # type: ignore[union-attr]
        async with Client(create_server(engine)) as admin:
            titles = sorted(t["title"] for t in content(await admin.call_tool("list_tasks", {}))["tasks"])
            assert titles == ["alice's", "bob's"]  # admin sees every agent's tasks
        assert (await engine.get_task(alice, mine["id"])).title == "alice's"  # untouched by bob


async def test_every_change_is_audited_with_request_id_and_never_a_secret(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    secret = "s3cr3t-TOKEN-value-9f8e"
    async with engine_on(database_url, mcp_config, tmp_path, environ={"PAO_SECRET_TOKEN": secret}) as engine:
        async with Client(create_server(engine)) as owner:
            task = content(
                await owner.call_tool(
                    "create_task",
                    task_args([{"id": "t", "uses": "time.get_current_time", "with": {"timezone": "${secrets.TOKEN}"}}]),
                )
            )["task"]
            for tool, arguments in [
                ("pause_task", {"task_id": task["id"]}),
                ("resume_task", {"task_id": task["id"]}),
                ("update_task", {"task_id": task["id"], "title": "renamed"}),
                ("run_now", {"task_id": task["id"]}),
                ("cancel_task", {"task_id": task["id"]}),
            ]:
                content(await owner.call_tool(tool, arguments))
            made = content(await owner.call_tool("create_agent", {"name": "aud", "scopes": ["tasks:read"]}))
            entries = content(await owner.call_tool("list_audit", {"target_id": task["id"]}))["entries"]
            since = datetime.now(UTC) - timedelta(minutes=1)
            admin_actions = content(
                await owner.call_tool("list_audit", {"action": "create_agent", "since": since.isoformat()})
            )
            nothing = content(await owner.call_tool("list_audit", {"until": since.isoformat()}))
        async with engine.db.acquire() as conn:
            everything = json.dumps([dict(r) for r in await conn.fetch("SELECT * FROM audit_log")], default=str)
    assert [e["action"] for e in reversed(entries)] == [
        "create_task", "pause_task", "resume_task", "update_task", "run_now", "cancel_task"
    ]  # fmt: skip
    assert all(e["agent_name"] == "owner" and e["outcome"] == "ok" and e["request_id"] for e in entries)
    assert len({e["request_id"] for e in entries}) == len(entries)
    assert [e["target_id"] for e in admin_actions["entries"]] == [made["agent"]["id"]]
    assert nothing["entries"] == []
    assert secret not in everything and made["token"] not in everything


async def test_admin_only_and_scopes_are_enforced_in_the_engine_too(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        reader, _ = await agent(engine, "reader", ["tasks:read"])
        with pytest.raises(PermissionDenied, match="'admin'"):
            await engine.create_agent(reader, name="x", scopes=["admin"])
        with pytest.raises(PermissionDenied):
            await engine.list_audit(reader)
        with pytest.raises(NotFound):
            await engine.get_task(reader, (await engine.create_task(engine.owner, task_args(NOOP))).task.id)


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
async def test_another_agents_resources_and_subscriptions_are_not_found(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    """Reading or subscribing to another agent's task or run answers as for one that does not exist, on both
    the 2026-07-28 listen stream and the earlier resources/subscribe; the agent's own still work."""
    from mcp.shared.exceptions import MCPError

    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        alice, _ = await agent(engine, "alice", ["tasks:read", "tasks:write", "runs:read", "runs:write"])
        bob, _ = await agent(engine, "bob", ["tasks:read", "tasks:write", "runs:read", "runs:write"])
        theirs = await engine.create_task(alice, task_args(NOOP))
        run = await engine.run_now(alice, theirs.task.id)
        await wait_run(engine, run.id)
        mine = await engine.create_task(bob, task_args(NOOP))
        missing = "00000000-0000-4000-8000-000000000000"
        for mode in ("2026-07-28", "legacy"):
            async with Client(create_server(engine, caller=bob), mode=mode) as client:
                answers: list[str] = []
                for uri in (f"pao://tasks/{theirs.task.id}", f"pao://runs/{run.id}", f"pao://tasks/{missing}"):
                    with pytest.raises(MCPError) as read:
                        await client.read_resource(uri)
                    answers.append(str(read.value).replace(str(theirs.task.id), "ID").replace(missing, "ID"))
                    with pytest.raises(MCPError) as subscribed:
                        if mode == "legacy":
                            await client.subscribe_resource(uri)
                        else:
                            async with client.listen(resource_subscriptions=[uri]):
                                pass
                    assert "does not exist" in str(subscribed.value), (mode, uri, subscribed.value)
                assert answers[0] == answers[2], answers  # another agent's task reads as a missing one
                assert "does not exist" in answers[1]
                own = f"pao://tasks/{mine.task.id}"
                assert json.loads((await client.read_resource(own)).contents[0].text)["id"] == str(mine.task.id)  # type: ignore[union-attr]
                if mode == "legacy":
                    await client.subscribe_resource(own)
                else:
                    async with client.listen(resource_subscriptions=[own]):
                        pass


@pytest.mark.filterwarnings("ignore:resources/subscribe is removed")
async def test_resources_need_the_scopes_of_the_tools_that_read_the_same(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    """An agent reads, lists and follows only the resources its scopes let it read through the tools: its
    own task without tasks:read is refused naming the scope (and audited), on both subscription paths."""
    from mcp.shared.exceptions import MCPError

    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        publisher, _ = await agent(engine, "publisher", ["events:publish", "runs:write", "tasks:write"])
        own = await engine.create_task(publisher, task_args(NOOP))
        run = await engine.run_now(publisher, own.task.id)
        await wait_run(engine, run.id)
        event = await engine.publish_event(publisher, topic="p.q", data={}, dedupe_key=None, source=None)
        for mode in ("2026-07-28", "legacy"):
            async with Client(create_server(engine, caller=publisher), mode=mode) as client:
                for uri, scope in (
                    (f"pao://tasks/{own.task.id}", "tasks:read"),
                    (f"pao://runs/{run.id}", "runs:read"),
                    ("pao://downstream", "tasks:read"),
                ):
                    with pytest.raises(MCPError) as read:
                        await client.read_resource(uri)
                    assert f"needs the scope '{scope}'" in str(read.value), read.value
                    with pytest.raises(MCPError) as followed:
                        if mode == "legacy":
                            await client.subscribe_resource(uri)
                        else:
                            async with client.listen(resource_subscriptions=[uri]):
                                pass
                    assert f"needs the scope '{scope}'" in str(followed.value), followed.value
                readable = json.loads((await client.read_resource(f"pao://events/{event.event_id}")).contents[0].text)  # type: ignore[union-attr]
                assert readable["id"] == event.event_id
                assert json.loads((await client.read_resource("pao://health")).contents[0].text)  # type: ignore[union-attr]
                listed = [str(r.uri) for r in (await client.list_resources()).resources]
                assert listed == ["pao://health"], listed
        denied, _ = await engine.list_audit(engine.owner, agent_id=publisher.id, action="resources/read")
        # Each kind of refusal is audited (repeats of one within seconds are counted, not written again).
        assert {e.target_id for e in denied} >= {f"pao://tasks/{own.task.id}", f"pao://runs/{run.id}"}
        assert all(e.outcome == "denied" for e in denied)


async def test_another_agents_events_are_not_found_and_not_listed(
    database_url: str, mcp_config: Path, tmp_path: Path
) -> None:
    """Events are read back by the agent that published them (and admins): another agent's event answers as a
    missing one, lists leave it out, and of an event's runs an agent sees only those of its own tasks."""
    from mcp.shared.exceptions import MCPError

    everything = ["tasks:read", "tasks:write", "runs:read", "runs:write", "events:publish"]
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        alice, _ = await agent(engine, "alice", everything)
        bob, _ = await agent(engine, "bob", everything)
        on_ping = {**task_args(NOOP), "schedule_kind": "event", "schedule_expr": "team.ping"}
        await engine.create_task(alice, on_ping)
        await engine.create_task(bob, on_ping)
        async with Client(create_server(engine, caller=alice)) as a, Client(create_server(engine, caller=bob)) as b:
            published = content(await a.call_tool("publish_event", {"topic": "team.ping", "data": {"n": 1}}))
            assert len(published["runs"]) == 2  # matching is not scoped: both agents' tasks fire
            event_id = published["event_id"]
            missing = 10**12
            theirs = await b.call_tool("get_event", {"event_id": event_id})
            absent = await b.call_tool("get_event", {"event_id": missing})
            assert theirs.is_error and absent.is_error
            assert theirs.content[0].text.replace(str(event_id), "ID") == absent.content[0].text.replace(  # type: ignore[union-attr]
                str(missing), "ID"
            )
            with pytest.raises(MCPError, match="does not exist"):
                await b.read_resource(f"pao://events/{event_id}")
            assert content(await b.call_tool("list_events", {}))["events"] == []
            own = content(await a.call_tool("get_event", {"event_id": event_id}))
            alices_tasks = {t["id"] for t in content(await a.call_tool("list_tasks", {}))["tasks"]}
            assert len(own["runs"]) == 1 and own["runs"][0]["task_id"] in alices_tasks
            assert [e["id"] for e in content(await a.call_tool("list_events", {"topic": "team.*"}))["events"]] == [
                event_id
            ]
        async with Client(create_server(engine)) as admin:
            assert len(content(await admin.call_tool("get_event", {"event_id": event_id}))["runs"]) == 2


async def test_deleting_an_agent_pauses_what_it_set_up(database_url: str, mcp_config: Path, tmp_path: Path) -> None:
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        bot, _ = await agent(engine, "bot", ["tasks:write", "runs:write", "events:publish"])
        other, _ = await agent(engine, "other", ["tasks:write", "runs:write"])
        every_minute = (
            await engine.create_task(bot, task_args(NOOP, schedule_kind="cron", schedule_expr="* * * * *"))
        ).task
        on_event = (
            await engine.create_task(
                bot, task_args(NOOP, schedule_kind="event", schedule_expr="bot.ping", title="on ping")
            )
        ).task
        queued = await engine.run_now(bot, on_event.id)
        paused_before = (await engine.create_task(bot, task_args(NOOP, title="paused already"))).task
        await engine.pause_task(bot, paused_before.id)
        bystander = (
            await engine.create_task(other, task_args(NOOP, schedule_kind="cron", schedule_expr="* * * * *"))
        ).task

        deleted = await engine.delete_agent(engine.owner, bot.id)
        assert set(deleted.paused_tasks or []) == {every_minute.id, on_event.id}
        for task_id in (every_minute.id, on_event.id):
            task = await engine.get_task(engine.owner, task_id)
            assert task.status == "paused" and "'bot' was deleted by owner" in (task.paused_reason or "")
        run = await engine.get_run(engine.owner, queued.id)
        assert run.status == "cancelled" and "was deleted" in (run.reason or "")
        # An event no longer starts the deleted agent's task; another agent's task is untouched.
        published = await engine.publish_event(engine.owner, topic="bot.ping", data={}, dedupe_key=None, source=None)
        assert published.runs == []
        assert (await engine.get_task(engine.owner, bystander.id)).status == "active"
        assert (await engine.get_task(engine.owner, paused_before.id)).paused_reason == "paused by bot (pause_task)"
        # An admin can keep one going.
        resumed = await engine.resume_task(engine.owner, on_event.id)
        assert resumed.task.status == "active"
        entries, _ = await engine.list_audit(engine.owner, agent_id=engine.owner.id, action="pause_task")
        assert len(entries) == 2 and all("was deleted" in e.details["reason"] for e in entries)
