"""The downstream pool against real servers over real transports (no mocks of the SDK).

`mcp-server-time` is the real stdio server; `fixtures/fixture_server.py` is a small
MCPServer with tools that misbehave on request (crash, hang, ...), served over
stdio, SSE and streamable HTTP.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import psutil
import pytest

from pao_orchestrator.engine.downstream import (
    DownstreamConfigError,
    DownstreamError,
    DownstreamPool,
    DownstreamRejected,
    DownstreamTimeout,
    DownstreamUnavailable,
    Registry,
    UnknownServer,
    UnknownTool,
)
from tests.server.serving import free_port

FIXTURE = Path(__file__).parent / "fixtures" / "fixture_server.py"
TIME = {"command": sys.executable, "args": ["-m", "mcp_server_time", "--local-timezone", "UTC"]}
FX = {"command": sys.executable, "args": [str(FIXTURE)]}


def registry(**servers: dict[str, Any]) -> Registry:
    return Registry.from_dict({"mcpServers": servers})


def children(marker: str) -> list[psutil.Process]:
    """Our live (non-zombie) descendants whose command line mentions `marker`."""
    found = []
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE and any(marker in part for part in child.cmdline()):
                found.append(child)
        except psutil.NoSuchProcess:
            continue
    return found


async def pid_of(pool: DownstreamPool, server: str) -> int:
    """The server process's own pid, as the fixture's `pid` tool reports it."""
    pid: int = (await pool.call_tool(server, "pid", {}, timeout=10)).value["result"]
    return pid


async def wait_gone(pids: list[int], limit: float = 10.0) -> None:
    with anyio.fail_after(limit):
        while True:
            alive = []
            for pid in pids:
                try:
                    if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                        alive.append(pid)
                except psutil.NoSuchProcess:
                    pass
            if not alive:
                return
            await anyio.sleep(0.05)


# --------------------------------------------------------------------------- mcp-server-time over stdio


async def test_time_server_call_structured_and_session_reused() -> None:
    with anyio.fail_after(30):
        async with DownstreamPool(registry(time=TIME), environ=os.environ) as pool:
            pids = set()
            for _ in range(3):
                out = await pool.call_tool("time", "get_current_time", {"timezone": "Europe/Chisinau"})
                assert out.is_error is False
                assert out.value["timezone"] == "Europe/Chisinau"
                assert "datetime" in out.value
                assert '"timezone"' in out.text
                pids.add(pool.pid("time"))
            assert len(pids) == 1
            (pid,) = pids
            assert pid is not None
            assert [p.pid for p in children("mcp_server_time")] == [pid]

            rtt = await pool.ping("time")
            assert 0 < rtt < 5
            schema = await pool.tool_schema("time", "get_current_time")
            assert schema is not None
            assert "timezone" in schema["properties"]
        await wait_gone([pid])
        assert children("mcp_server_time") == []


async def test_concurrent_first_calls_open_one_process() -> None:
    with anyio.fail_after(30):
        async with DownstreamPool(registry(time=TIME), environ=os.environ) as pool:
            results: list[Any] = []

            async def call() -> None:
                out = await pool.call_tool("time", "get_current_time", {"timezone": "UTC"})
                results.append(out.value["timezone"])

            async with anyio.create_task_group() as tg:
                for _ in range(8):
                    tg.start_soon(call)
            assert results == ["UTC"] * 8
            assert len(children("mcp_server_time")) == 1


async def test_unknown_tool_unknown_server_and_tool_error() -> None:
    with anyio.fail_after(30):
        async with DownstreamPool(registry(time=TIME, other=FX), environ=os.environ) as pool:
            with pytest.raises(UnknownTool) as tool_info:
                await pool.call_tool("time", "nosuch", {})
            message = str(tool_info.value)
            assert tool_info.value.retryable is False
            assert "'time'" in message and "'nosuch'" in message
            assert "get_current_time" in message and "convert_time" in message

            with pytest.raises(UnknownServer) as server_info:
                await pool.call_tool("weather", "forecast", {})
            assert server_info.value.retryable is False
            assert "'weather'" in str(server_info.value)
            assert "other, time" in str(server_info.value)
            with pytest.raises(UnknownServer):
                await pool.list_tools("weather")
            with pytest.raises(UnknownTool):
                await pool.tool_schema("time", "nosuch")

            out = await pool.call_tool("time", "get_current_time", {"timezone": "Nowhere/Invalid"})
            assert out.is_error is True
            assert "Nowhere/Invalid" in out.text
            assert out.value == out.text


async def test_no_servers_configured_message() -> None:
    async with DownstreamPool(Registry(), environ=os.environ) as pool:
        with pytest.raises(UnknownServer, match="no downstream servers are configured"):
            await pool.call_tool("time", "get_current_time", {})
        assert await pool.list_tools() == {}


# --------------------------------------------------------------------------- the fixture server over stdio


async def test_output_conversion() -> None:
    with anyio.fail_after(30):
        async with DownstreamPool(registry(fx=FX), environ=os.environ) as pool:
            echo = await pool.call_tool("fx", "echo", {"message": "hi"})
            assert echo.value == {"message": "hi"}

            parsed = await pool.call_tool("fx", "text_json", {})
            assert parsed.value == {"answer": 42, "items": [1, 2]}
            assert parsed.text == '{"answer": 42, "items": [1, 2]}'

            plain = await pool.call_tool("fx", "plain_text", {})
            assert plain.value == "hello, world"

            image = await pool.call_tool("fx", "image", {})
            assert image.value == ["caption", {"type": "image", "mimeType": "image/png"}]
            assert image.text == "caption"
            assert "aGVsbG8" not in repr(image.value)

            failed = await pool.call_tool("fx", "fail", {"message": "nope"})
            assert failed.is_error is True

            with pytest.raises(DownstreamRejected) as info:
                await pool.call_tool("fx", "reject", {"message": "bad value for x"})
            assert info.value.retryable is False
            assert "bad value for x" in str(info.value)
            assert "'fx'" in str(info.value) and "'reject'" in str(info.value)


async def test_crash_mid_call_is_retryable_and_next_call_restarts() -> None:
    errors = io.StringIO()  # no file descriptor: exercises the stderr pump
    with anyio.fail_after(40):
        async with DownstreamPool(registry(fx=FX), environ=os.environ, stderr=errors) as pool:
            first = await pid_of(pool, "fx")
            cached = pool._sessions["fx"].tools  # the listing is fetched once per session...
            assert cached is not None and "crash" in {t.name for t in cached}
            await pid_of(pool, "fx")
            assert pool._sessions["fx"].tools is cached
            with pytest.raises(DownstreamUnavailable) as info:
                await pool.call_tool("fx", "crash", {})
            assert info.value.retryable is True
            assert "'fx'" in str(info.value) and "'crash'" in str(info.value)
            assert "exited with code 1" in str(info.value)
            second = await pid_of(pool, "fx")
            assert second != first
            assert pool._sessions["fx"].tools is not cached  # ...and again after a restart
            await wait_gone([first], limit=5)
        assert "crashing on purpose" in errors.getvalue()


async def test_hung_server_times_out_and_is_restarted(tmp_path: Path) -> None:
    log = (tmp_path / "stderr.log").open("w")
    try:
        with anyio.fail_after(40):
            async with DownstreamPool(registry(fx=FX), environ=os.environ, stderr=log, ping_timeout=1.0) as pool:
                first = await pid_of(pool, "fx")
                with pytest.raises(DownstreamTimeout) as info:
                    await pool.call_tool("fx", "hang", {"seconds": 30}, timeout=1.0)
                assert info.value.retryable is True
                assert "did not answer" in str(info.value) and "within 1.0s" in str(info.value)
                assert "'hang'" in str(info.value)
                # The ping after the timeout failed too, so the next call gets a fresh process.
                second = await pid_of(pool, "fx")
                assert second != first
            await wait_gone([first, second])
    finally:
        log.close()


async def test_slow_but_alive_server_keeps_its_session() -> None:
    with anyio.fail_after(30):
        async with DownstreamPool(registry(fx=FX), environ=os.environ, default_call_timeout=0.5) as pool:
            first = await pid_of(pool, "fx")
            with pytest.raises(DownstreamTimeout, match=r"within 0\.5s"):
                await pool.call_tool("fx", "sleep", {"seconds": 5})
            assert await pid_of(pool, "fx") == first


async def test_server_that_fails_to_start() -> None:
    exits = {
        "command": sys.executable,
        "args": ["-c", "import sys; sys.stderr.write('boom\\n'); sys.exit(3)"],
    }
    missing = {"command": "/nonexistent/pao-test-server"}
    with anyio.fail_after(30):
        async with DownstreamPool(
            registry(exits=exits, missing=missing, time=TIME), environ=os.environ, stderr=io.StringIO()
        ) as pool:
            with pytest.raises(DownstreamUnavailable) as info:
                await pool.call_tool("exits", "anything", {})
            assert info.value.retryable is True
            assert "'exits'" in str(info.value) and "exited with code 3" in str(info.value)

            with pytest.raises(DownstreamUnavailable) as info:
                await pool.ping("missing")
            assert "'missing'" in str(info.value) and "/nonexistent/pao-test-server" in str(info.value)

            listing = await pool.list_tools()
            assert list(listing) == ["exits", "missing", "time"]
            assert listing["time"].ok and {t.name for t in listing["time"].tools} >= {"get_current_time"}
            assert not listing["exits"].ok and isinstance(listing["exits"].error, DownstreamUnavailable)
            assert not listing["missing"].ok and listing["missing"].tools == []


async def test_env_resolution_and_secret_withholding(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAO_TEST_VALUE", "resolved-value")
    monkeypatch.setenv("PAO_SECRET_TEST", "do-not-leak")
    monkeypatch.setenv("PAO_TEST_INHERITED", "inherited")
    monkeypatch.setenv("DATABASE_URL", "postgres://secret@db/pao")
    entry = {
        "command": sys.executable,
        "args": [str(FIXTURE), "stdio", "--", "arg=${env:PAO_TEST_VALUE}"],
        "env": {"FROM_REF": "${env:PAO_TEST_VALUE}", "EXPLICIT_SECRET": "${env:PAO_SECRET_TEST}"},
    }
    broken = {"command": sys.executable, "env": {"KEY": "${env:PAO_TEST_SURELY_UNSET}"}}
    with anyio.fail_after(30):
        async with DownstreamPool(registry(fx=entry, broken=broken), environ=os.environ) as pool:

            async def env(name: str) -> Any:
                return (await pool.call_tool("fx", "env", {"name": name})).value["result"]

            assert await env("FROM_REF") == "resolved-value"
            assert await env("PAO_TEST_INHERITED") == "inherited"
            assert await env("EXPLICIT_SECRET") == "do-not-leak"
            assert await env("PAO_SECRET_TEST") is None
            assert await env("DATABASE_URL") is None
            assert (await pool.call_tool("fx", "argv", {})).value["result"][-1] == "arg=resolved-value"

            with pytest.raises(DownstreamConfigError) as info:
                await pool.call_tool("broken", "x", {})
            assert info.value.retryable is False
            assert "PAO_TEST_SURELY_UNSET" in str(info.value) and "'broken'" in str(info.value)


async def test_stderr_never_reaches_stdout(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    log_path = tmp_path / "downstream.log"
    with log_path.open("w") as log, anyio.fail_after(30):
        async with DownstreamPool(registry(fx=FX), environ=os.environ, stderr=log) as pool:
            with pytest.raises(DownstreamUnavailable):
                await pool.call_tool("fx", "crash", {})
    assert "crashing on purpose" in log_path.read_text()
    assert "crashing" not in capfd.readouterr().out


async def test_aclose_leaves_no_orphans_and_is_idempotent() -> None:
    with anyio.fail_after(40):
        pool = DownstreamPool(registry(time=TIME, fx=FX, slow=FX), environ=os.environ)
        async with pool:
            listing = await pool.list_tools()  # starts the three servers concurrently
            assert all(entry.ok for entry in listing.values())
            await pool.call_tool("time", "get_current_time", {"timezone": "UTC"})
            await pool.call_tool("fx", "pid", {})
            # A session busy in a blocking call must be terminated too.
            with pytest.raises(DownstreamTimeout):
                await pool.call_tool("slow", "sleep", {"seconds": 60}, timeout=0.5)
            pids = [p.pid for p in children("mcp_server_time") + children(str(FIXTURE))]
            assert len(pids) == 3
            await pool.aclose()
            await wait_gone(pids, limit=1.0)  # aclose returns only once they are gone
            await pool.aclose()
            with pytest.raises(DownstreamUnavailable, match="shutting down"):
                await pool.call_tool("fx", "pid", {})
        assert children("mcp_server_time") == [] and children(str(FIXTURE)) == []
        # Workers still running during shutdown get a retryable error, not a crash.
        with pytest.raises(DownstreamUnavailable, match="shutting down") as info:
            await pool.call_tool("fx", "pid", {})
        assert info.value.retryable is True
        assert not (await pool.list_tools())["fx"].ok


async def test_pool_must_be_entered() -> None:
    pool = DownstreamPool(registry(fx=FX), environ=os.environ)
    with pytest.raises(RuntimeError, match="entered"):
        await pool.call_tool("fx", "pid", {})


# --------------------------------------------------------------------------- remote transports


@pytest.fixture
def http_fixture(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """The fixture server as a subprocess on a free port, for the transport named by the test's param."""
    transport: str = request.param
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, str(FIXTURE), transport, "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        yield transport, port
    finally:
        proc.kill()
        proc.wait(timeout=10)


async def wait_for_port(port: int, limit: float = 20.0) -> None:
    with anyio.fail_after(limit):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.1)
                continue
            await stream.aclose()
            return


@pytest.mark.parametrize("http_fixture", ["sse", "streamable-http"], indirect=True)
async def test_remote_transports(http_fixture: tuple[str, int], monkeypatch: pytest.MonkeyPatch) -> None:
    transport, port = http_fixture
    monkeypatch.setenv("PAO_TEST_HEADER_TOKEN", "t0ken")
    path = "sse" if transport == "sse" else "mcp"
    entry = {
        "url": f"http://127.0.0.1:{port}/{path}",
        "transport": transport,
        "headers": {"X-Pao-Test": "Bearer ${env:PAO_TEST_HEADER_TOKEN}"},
    }
    with anyio.fail_after(40):
        await wait_for_port(port)
        async with DownstreamPool(registry(remote=entry), environ=os.environ) as pool:
            out = await pool.call_tool("remote", "echo", {"message": transport})
            assert out.value == {"message": transport}
            headers = (await pool.call_tool("remote", "headers", {})).value
            assert headers.get("x-pao-test") == "Bearer t0ken"
            assert (await pool.call_tool("remote", "text_json", {})).value["answer"] == 42
            assert await pool.ping("remote") >= 0
            with pytest.raises(UnknownTool, match="echo"):
                await pool.call_tool("remote", "nosuch", {})
            with pytest.raises(DownstreamTimeout):
                await pool.call_tool("remote", "sleep", {"seconds": 5}, timeout=0.5)
            assert (await pool.call_tool("remote", "echo", {"message": "again"})).value == {"message": "again"}


@pytest.mark.parametrize("transport", ["sse", "streamable-http"])
async def test_remote_server_not_reachable(transport: str) -> None:
    entry = {"url": f"http://127.0.0.1:{free_port()}/mcp", "transport": transport}
    with anyio.fail_after(30):
        async with DownstreamPool(registry(remote=entry), environ=os.environ, connect_timeout=10) as pool:
            with pytest.raises(DownstreamUnavailable) as info:
                await pool.call_tool("remote", "echo", {"message": "x"})
            assert info.value.retryable is True
            assert "'remote'" in str(info.value) and "not reachable" in str(info.value)


def test_errors_are_step_errors() -> None:
    from pao_orchestrator.errors import PaoError, StepError

    assert issubclass(DownstreamError, StepError) and issubclass(DownstreamError, PaoError)
