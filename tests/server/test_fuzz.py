"""Random argument sets to every tool (hypothesis): no internal error escapes and the server stays up.

10,000 argument sets in process (an MCP client session over memory streams, the whole server
behind it), spread over every tool the server lists; then a smaller number through a real
`pao serve --transport http`. Arguments mix the tool's own field names with strangers, and
values of every JSON type: huge and negative numbers, NUL characters, nesting, templates, ids
of real and missing objects. (A lone surrogate cannot be sent by an SDK client, which encodes
UTF-8; the hostile-input table sends one as raw JSON.)
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from mcp import Client
from mcp.shared.exceptions import MCPError

from pao_orchestrator.server.app import create_server
from tests.engine.support import engine_on, task_args
from tests.server.serving import create_agent, free_port, get, http_client, pao, wait_healthy

IN_PROCESS = 10_000
OVER_HTTP = 300
INTERNAL_ERROR = -32603

texts = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        [
            "",
            "\x00",
            "a\x00b",
            "${secrets.TOKEN|reverse}",
            "${''.__class__.__mro__}",
            "${'a'*10**9}",
            "'; DROP TABLE tasks; --",
            "00000000-0000-0000-0000-000000000000",
            "cron",
            "once",
            "*/5 * * * *",
            "FREQ=DAILY",
            "2099-01-01T00:00:00Z",
            "Europe/Chisinau",
            "admin",
            "tasks:read",
        ]
    ),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12,
)


def arguments(schema: dict[str, Any], known_ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    names = sorted(schema.get("properties", {}))
    value = st.one_of(values, st.sampled_from(known_ids)) if known_ids else values
    key = st.one_of(st.sampled_from(names), texts) if names else texts
    return st.dictionaries(key, value, max_size=6)


class ErrorLog(logging.Handler):
    """Every ERROR record of the server's loggers (the SDK logs an unexpected tool exception there)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name.startswith(("mcp", "pao_orchestrator")):
            self.records.append(record)


@contextlib.contextmanager
def error_log() -> Iterator[ErrorLog]:
    handler = ErrorLog()
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield handler
    finally:
        root.removeHandler(handler)


def fuzz(portal: BlockingPortal, client: Client, examples: int, known_ids: list[str], batch: int) -> dict[str, int]:
    """Send `examples` random argument sets spread over every tool, `batch` at a time on one session
    (concurrently, as a busy client would); count the answers by kind."""
    tools = portal.call(client.list_tools).tools
    schemas = {t.name: t.input_schema for t in tools}
    calls = st.sampled_from(sorted(schemas)).flatmap(
        lambda name: st.tuples(st.just(name), arguments(schemas[name], known_ids))
    )
    seen = {"ok": 0, "tool error": 0, "invalid params": 0}

    async def send(name: str, args: dict[str, Any]) -> None:
        try:
            result = await client.call_tool(name, args)
        except MCPError as exc:
            assert exc.error.code != INTERNAL_ERROR, (name, args, exc.error.message)
            seen["invalid params"] += 1
            return
        if result.is_error:
            text = " ".join(getattr(c, "text", "") for c in result.content)
            assert "Traceback" not in text, (name, args, text)
            seen["tool error"] += 1
        else:
            seen["ok"] += 1

    async def send_all(group: list[tuple[str, dict[str, Any]]]) -> None:
        async with anyio.create_task_group() as tasks:
            for name, args in group:
                tasks.start_soon(send, name, args)

    @settings(
        max_examples=max(1, examples // batch),
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )
    @given(st.lists(calls, min_size=batch, max_size=batch))
    def one(group: list[tuple[str, dict[str, Any]]]) -> None:
        portal.call(send_all, group)

    one()
    return seen


def test_random_arguments_to_every_tool_in_process(database_url: str, mcp_config: Path, tmp_path: Path) -> None:
    with start_blocking_portal() as portal, error_log() as errors:
        engine_cm = portal.wrap_async_context_manager(
            engine_on(database_url, mcp_config, tmp_path, run_worker=False, environ={"PAO_SECRET_TOKEN": "x" * 12})
        )
        with engine_cm as engine:
            created = portal.call(
                engine.create_task, engine.owner, task_args([{"id": "a", "uses": "pao.noop", "with": {}}])
            )
            known = [str(created.task.id), str(engine.owner.id)]
            with portal.wrap_async_context_manager(Client(portal.call(create_server, engine))) as client:
                seen = fuzz(portal, client, IN_PROCESS, known, batch=50)
                health = portal.call(client.call_tool, "health", {})
                assert not health.is_error
    assert sum(seen.values()) >= IN_PROCESS
    assert seen["tool error"] > 0 and seen["ok"] > 0
    assert errors.records == [], [r.getMessage() for r in errors.records[:5]]


@pytest.fixture
def http_server(database_url: str, tmp_path: Path, mcp_config: Path) -> Iterator[tuple[str, str]]:
    token = create_agent(database_url, tmp_path, mcp_config, "fuzzer", "admin")  # every tool: no 403s
    port = free_port()
    proc = pao(
        ["serve", "--transport", "http", "--port", str(port)], database_url, tmp_path, mcp_config,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(proc, base)
        yield base, token
        assert proc.poll() is None, "the server died"
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        assert proc.stdout is not None and proc.stderr is not None
        stderr = proc.stderr.read().decode()
        proc.stdout.close()
        proc.stderr.close()
        assert "Traceback" not in stderr and "unexpected exception" not in stderr, stderr[-3000:]


def test_random_arguments_over_streamable_http(http_server: tuple[str, str]) -> None:
    base, token = http_server
    with start_blocking_portal() as portal, portal.wrap_async_context_manager(http_client(base, token)) as client:
        seen = fuzz(portal, client, OVER_HTTP, ["00000000-0000-0000-0000-000000000000"], batch=10)
        assert not portal.call(client.call_tool, "list_tasks", {}).is_error
    assert sum(seen.values()) >= OVER_HTTP
    assert get(f"{base}/health")[1] == {"status": "ok"}
