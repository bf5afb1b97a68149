"""The MCP face over real transports (`pao serve` as a subprocess): live run updates, progress and
cancelling in flight over stdio, SSE and streamable HTTP; subscriptions/listen on 2026-07-28 connections and
resources/subscribe on earlier ones."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
import pytest
from mcp import Client, StdioServerParameters
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPDeprecationWarning

from tests.e2e.test_stdio import server_params
from tests.engine.support import task_args
from tests.server.serving import create_agent, free_port

EVERYTHING = "tasks:read,tasks:write,runs:read,runs:write"

PIPELINE = [
    {"id": "a", "uses": "pao.sleep", "with": {"seconds": 0.3}},
    {"id": "b", "uses": "pao.sleep", "with": {"seconds": 0.3}},
]


@contextmanager
def serving(params: StdioServerParameters, transport: str) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [params.command, *params.args, "--transport", transport, "--port", str(port)],
        env=params.env,
        cwd=params.cwd,
        stdout=subprocess.DEVNULL,
    )
    try:
        for _ in range(300):
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"pao serve exited with {proc.returncode}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)


@asynccontextmanager
async def connect(kind: str, params: StdioServerParameters, token: str, **options: Any) -> AsyncIterator[Client]:
    """stdio as the local owner; HTTP and SSE as an agent with a bearer token (the transports need one)."""
    if kind == "stdio":
        async with Client(params, **options) as client:
            yield client
        return
    with serving(params, "http" if kind == "http" else "sse") as base:
        headers = {"Authorization": f"Bearer {token}"}
        if kind == "http":
            async with (
                httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=300)) as http,
                Client(streamable_http_client(f"{base}/mcp", http_client=http), **options) as client,
            ):
                yield client
        else:
            async with Client(sse_client(f"{base}/sse", headers=headers), **options) as client:
                yield client


async def ok(client: Client, tool: str, arguments: dict[str, Any], **kw: Any) -> dict[str, Any]:
    result = await client.call_tool(tool, arguments, **kw)
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


@pytest.mark.parametrize("kind", ["stdio", "stdio-legacy", "sse", "http", "http-legacy"])
async def test_live_updates_progress_and_cancel_in_flight(
    database_url: str, mcp_config: Path, tmp_path: Path, kind: str
) -> None:
    params = server_params(database_url, mcp_config, tmp_path)
    token = "" if kind.startswith("stdio") else create_agent(database_url, tmp_path, mcp_config, "live", EVERYTHING)
    updated: list[str] = []

    async def on_message(message: Any) -> None:
        if isinstance(message, types.ResourceUpdatedNotification):
            updated.append(str(message.params.uri))

    progress: list[float] = []

    async def on_progress(p: float, _total: float | None, _message: str | None) -> None:
        progress.append(p)

    # The SSE transport speaks the handshake-era protocol; "-legacy" pins it on the others.
    legacy = kind == "sse" or kind.endswith("-legacy")
    kind = kind.removesuffix("-legacy")
    options: dict[str, Any] = {"mode": "legacy", "message_handler": on_message} if legacy else {}
    with anyio.fail_after(90):
        async with connect(kind, params, token, **options) as client:
            task = (await ok(client, "create_task", task_args(PIPELINE)))["task"]
            if legacy:
                caps = client.server_capabilities.resources
                assert caps is not None and caps.subscribe
                first = await ok(client, "run_now", {"task_id": task["id"]})
                uri = f"pao://runs/{first['run_id']}"
                with pytest.warns(MCPDeprecationWarning):  # deprecated for 2026-07-28, served for older clients
                    await client.subscribe_resource(uri)
                with anyio.fail_after(20):
                    while uri not in updated:
                        await anyio.sleep(0.05)
                done = await ok(client, "get_run", {"run_id": first["run_id"], "wait_seconds": 20})
                assert done["status"] == "succeeded"
            else:
                first = await ok(client, "run_now", {"task_id": task["id"]})
                uri = f"pao://runs/{first['run_id']}"
                seen: list[str] = []
                async with client.listen(resource_subscriptions=[uri]) as sub:
                    with anyio.fail_after(20):
                        async for _event in sub:
                            text = (await client.read_resource(uri)).contents[0].text  # type: ignore[union-attr]
                            seen.append(json.loads(text)["status"])
                            if seen[-1] == "succeeded":
                                break
                assert seen[-1] == "succeeded" and len(seen) >= 2, seen
            waited = await ok(client, "run_now", {"task_id": task["id"], "wait": 20}, progress_callback=on_progress)
            assert waited["status"] == "succeeded"
            assert progress == [1, 2], progress

            # Cancelling in flight: a 30 s sleep stops within a second of cancel_run.
            nap = task_args([{"id": "nap", "uses": "pao.sleep", "with": {"seconds": 30}}], title="nap")
            sleeping = await ok(client, "run_now", {"task_id": (await ok(client, "create_task", nap))["task"]["id"]})
            with anyio.fail_after(10):
                while (await ok(client, "get_run", {"run_id": sleeping["run_id"]}))["status"] != "running":
                    await anyio.sleep(0.02)
            t0 = time.monotonic()
            await ok(client, "cancel_run", {"run_id": sleeping["run_id"]})
            stopped = await ok(client, "get_run", {"run_id": sleeping["run_id"], "wait_seconds": 5})
            assert stopped["status"] == "cancelled" and time.monotonic() - t0 < 1.0, stopped
