"""A table of hostile inputs through a real `pao serve --transport http`: each is refused cleanly,
the server goes on serving, and the database holds nothing half-written.

Run with `-s` to print the table with its counts (the figure in the README).
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx2
import pytest

from tests.server.serving import auth_headers, create_agent, free_port, get, pao, wait_healthy

REPEAT = 10
GOOD_TASK = {
    "title": "good",
    "schedule_kind": "once",
    "schedule_expr": "2099-01-01T00:00:00Z",
    "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"v": 1}}]},
}


def task(**changes: Any) -> dict[str, Any]:
    return {**GOOD_TASK, **changes}


def step(value: Any) -> dict[str, Any]:
    return task(payload={"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"v": value}}]})


class Session:
    """A raw streamable-HTTP MCP session: what a client sends, byte for byte."""

    def __init__(self, base: str, token: str, **headers: str) -> None:
        self.base = base
        self.headers = {
            **auth_headers(token),
            "Content-Type": "application/json",
            "Accept": "application/json, text/event-stream",
            **headers,
        }
        self.http = httpx2.Client(timeout=60)
        self.next_id = 1
        init = self.send_raw(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": 0,
                    "method": "initialize",
                    "params": {
                        "protocolVersion": "2025-06-18",
                        "capabilities": {},
                        "clientInfo": {"name": "hostile", "version": "1"},
                    },
                }
            ).encode()
        )
        assert init.status_code == 200, init.text
        self.headers["mcp-session-id"] = init.headers["mcp-session-id"]
        self.headers["mcp-protocol-version"] = "2025-06-18"
        self.send_raw(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode())

    def close(self) -> None:
        self.http.close()

    def send_raw(self, body: bytes, **headers: str) -> httpx2.Response:
        return self.http.post(f"{self.base}/mcp", content=body, headers={**self.headers, **headers})

    def call(self, name: str, arguments: Any) -> tuple[int, dict[str, Any] | None]:
        body = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": self.next_id,
                "method": "tools/call",
                "params": {"name": name, "arguments": arguments},
            }
        ).encode()
        self.next_id += 1
        return reply(self.send_raw(body))


def reply(response: httpx2.Response) -> tuple[int, dict[str, Any] | None]:
    """(HTTP status, the JSON-RPC message in the answer, from JSON or from the SSE stream)."""
    if response.status_code != 200:
        return response.status_code, None
    text = response.text
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        data = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
        messages = [json.loads(d) for d in data if d]
        return 200, messages[-1] if messages else None
    return 200, json.loads(text) if text else None


def clean_refusal(status: int, message: dict[str, Any] | None) -> str | None:
    """How the input was refused ('http 413', 'tool error', 'json-rpc error -32602'), or None if not."""
    if status != 200:
        return f"http {status}"
    if message is None:
        return None
    if "error" in message:
        code = message["error"].get("code")
        return None if code == -32603 else f"json-rpc error {code}"  # -32603: an internal error escaped
    result = message.get("result", {})
    if result.get("isError"):
        text = json.dumps(result.get("content"))
        return None if "Traceback" in text or "Internal" in text else "tool error"
    return None


@dataclass
class Row:
    category: str
    label: str
    send: Callable[[Session], tuple[int, dict[str, Any] | None]]


def rendered(template: str) -> Callable[[Session], tuple[int, dict[str, Any] | None]]:
    """Save a task whose template is refused only when rendered, run it, and answer as the run ended:
    a run that failed saying why counts as a tool error; anything else as not refused."""

    def send(session: Session) -> tuple[int, dict[str, Any] | None]:
        status, made = session.call("create_task", step(template))
        if made is None or made["result"].get("isError"):
            return status, made
        task_id = made["result"]["structuredContent"]["task"]["id"]
        _, ran = session.call("run_now", {"task_id": task_id})
        assert ran is not None
        run_id = ran["result"]["structuredContent"]["run_id"]
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            _, got = session.call("get_run", {"run_id": run_id})
            assert got is not None
            run = got["result"]["structuredContent"]
            if run["status"] in ("succeeded", "failed", "cancelled", "skipped"):
                refused = run["status"] == "failed" and "repetition would build more than" in (run["error"] or "")
                return 200, {"result": {"isError": refused, "content": [{"type": "text", "text": run["error"]}]}}
            time.sleep(0.05)
        return 200, None

    return send


def rows(other_task: str, other_run: str) -> list[Row]:
    def tool(name: str, arguments: Any) -> Callable[[Session], tuple[int, dict[str, Any] | None]]:
        return lambda s: s.call(name, arguments)

    nested = "[" * 1000 + "1" + "]" * 1000  # written as text: json.dumps itself stops short of this depth
    deep_body = (
        b'{"jsonrpc":"2.0","id":99,"method":"tools/call","params":{"name":"create_task","arguments":'
        + json.dumps(step("DEEP")).replace('"DEEP"', nested).encode()
        + b"}}"
    )
    big_body = (
        b'{"jsonrpc":"2.0","id":98,"method":"tools/call","params":{"name":"create_task","arguments":{"title":"'
        + (b"x" * (50 * 1024 * 1024))
        + b'"}}}'
    )
    surrogate = (
        b'{"jsonrpc":"2.0","id":97,"method":"tools/call","params":{"name":"create_task","arguments":'
        + json.dumps(task(title="a")).encode().replace(b'"a"', b'"\\ud800"')
        + b"}}"
    )
    return [
        Row("template escape", "${''.__class__.__mro__}", tool("create_task", step("${''.__class__.__mro__}"))),
        Row("template escape", "${cycler.__init__.__globals__}",
            tool("create_task", step("${cycler.__init__.__globals__}"))),
        Row("template escape", "${range(10**9)|list}", tool("create_task", step("${range(10**9)|list}"))),
        Row("template escape", "${'a'*10**9} (saved; its run fails rendering)", rendered("${'a'*10**9}")),
        Row("template escape", "${secrets.TOKEN|reverse}", tool("create_task", task(payload={"pipeline": [
            {"id": "a", "uses": "time.get_current_time", "with": {"timezone": "${secrets.TOKEN|reverse}"}}]}))),
        Row("SQL-looking", "title \"'; DROP TABLE tasks; --\" (stored as text)",
            tool("create_task", task(title="'; DROP TABLE tasks; --"))),
        Row("SQL-looking", "task_id \"1 OR 1=1\"", tool("get_task", {"task_id": "1 OR 1=1"})),
        Row("SQL-looking", "status \"active' OR '1'='1\"", tool("list_tasks", {"status": "active' OR '1'='1"})),
        Row("body", "50 MB body", lambda s: reply(s.send_raw(big_body))),
        Row("body", "1,000-deep JSON", lambda s: reply(s.send_raw(deep_body))),
        Row("body", "not JSON", lambda s: reply(s.send_raw(b"{\"jsonrpc\": \"2.0\", \"id\": 5, \"method\""))),
        Row("text", "NUL byte in a title", tool("create_task", task(title="a\x00b"))),
        Row("text", "NUL byte deep in a step", tool("create_task", step({"k": ["x\x00"]}))),
        Row("text", "lone surrogate in a title", lambda s: reply(s.send_raw(surrogate))),
        Row("numbers", "priority -1", tool("create_task", task(priority=-1))),
        Row("numbers", "priority 10**30", tool("create_task", task(priority=10**30))),
        Row("numbers", "max_retries 2**63", tool("create_task", task(max_retries=2**63))),
        Row("numbers", "list_runs limit -5", tool("list_runs", {"limit": -5})),
        Row("numbers", "snooze seconds 1e308", tool("snooze", {"task_id": other_task, "seconds": 1e308})),
        Row("types", "title 5", tool("create_task", task(title=5))),
        Row("types", "payload \"x\"", tool("create_task", task(payload="x"))),
        Row("types", "arguments a list", tool("create_task", [1, 2])),
        Row("types", "priority \"5\"", tool("create_task", task(priority="5"))),
        Row("foreign headers", "Host: evil.example", lambda s: reply(s.send_raw(b"{}", Host="evil.example"))),
        Row("foreign headers", "Origin: https://evil.example",
            lambda s: reply(s.send_raw(b"{}", Origin="https://evil.example"))),
        Row("another agent's ids", "get_task of another agent", tool("get_task", {"task_id": other_task})),
        Row("another agent's ids", "cancel_task of another agent", tool("cancel_task", {"task_id": other_task})),
        Row("another agent's ids", "get_run of another agent", tool("get_run", {"run_id": other_run})),
        Row("another agent's ids", "cancel_run of another agent", tool("cancel_run", {"run_id": other_run})),
    ]  # fmt: skip


@pytest.fixture
def server(database_url: str, tmp_path: Path, mcp_config: Path) -> Iterator[tuple[str, str, str]]:
    admin = create_agent(database_url, tmp_path, mcp_config, "root", "admin")
    mallory = create_agent(database_url, tmp_path, mcp_config, "mallory", "tasks:read,tasks:write,runs:read,runs:write")
    port = free_port()
    env_secret = {"PAO_SECRET_TOKEN": "s3cr3t-TOKEN-value-9f8e"}
    from tests.server.serving import pao_env

    env = pao_env(database_url, tmp_path, mcp_config, **env_secret)
    proc = pao(["serve", "--transport", "http", "--port", str(port)], database_url, tmp_path, mcp_config, env=env,
               stderr=subprocess.PIPE)  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield base, admin, mallory
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
        assert "Traceback" not in stderr, stderr[-3000:]


async def counts(database_url: str) -> dict[str, int]:
    conn = await asyncpg.connect(database_url)
    try:
        return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in ("tasks", "runs", "run_steps", "agents")}
    finally:
        await conn.close()


async def test_hostile_inputs_are_refused_cleanly_and_the_server_keeps_serving(
    server: tuple[str, str, str], database_url: str
) -> None:
    base, admin, mallory = server
    owner = Session(base, admin)
    attacker = Session(base, mallory)
    try:
        await run_table(base, owner, attacker, database_url)
    finally:
        owner.close()
        attacker.close()


async def run_table(base: str, owner: Session, attacker: Session, database_url: str) -> None:
    _, made = owner.call("create_task", GOOD_TASK)
    assert made is not None, made
    other_task = made["result"]["structuredContent"]["task"]["id"]
    _, ran = owner.call("run_now", {"task_id": other_task})
    assert ran is not None
    other_run = ran["result"]["structuredContent"]["run_id"]
    table: list[tuple[str, str, int, int, str]] = []
    accepted_sql_title = 0
    for row in rows(other_task, other_run):
        before = await counts(database_url)
        refused: dict[str, int] = {}
        for _ in range(REPEAT):
            status, message = row.send(attacker)
            how = clean_refusal(status, message)
            if how is None and row.label.startswith("title \"'"):
                # Accepted on purpose: text is stored as text.
                assert message is not None and not message["result"].get("isError"), message
                accepted_sql_title += row.label.startswith("title")
                how = "accepted as data"
            assert how is not None, (row.label, status, message)
            refused[how] = refused.get(how, 0) + 1
            # Still serving: health, and a good call between every two hostile ones.
            assert get(f"{base}/health")[1] == {"status": "ok"}
            status, good = attacker.call("list_tasks", {"limit": 1})
            assert status == 200 and good is not None and not good["result"].get("isError"), good
        after = await counts(database_url)
        if row.label.startswith("${'a'"):
            # The task is saved, its run fails when rendered: one task and one failed run per try.
            assert after["tasks"] - before["tasks"] == REPEAT and after["runs"] - before["runs"] == REPEAT
        elif not row.label.startswith("title \"'"):
            assert after == before, (row.label, before, after)  # nothing half-written
        table.append((row.category, row.label, REPEAT, sum(refused.values()), ", ".join(sorted(refused))))
    # The SQL-looking title is just a title; the tables are all there.
    assert accepted_sql_title == REPEAT
    assert (await counts(database_url))["tasks"] >= 1 + REPEAT * 2
    print()
    print(f"{'category':20} {'input':52} {'sent':>5} {'clean':>6}  how")
    for category, label, sent, clean, how in table:
        print(f"{category:20} {label[:52]:52} {sent:5} {clean:6}  {how}")
    print(f"{'total':20} {len(table):>52} {sum(r[2] for r in table):5} {sum(r[3] for r in table):6}")
