"""`pao` as users run it: a subprocess serving HTTP or SSE, agents made with `pao agents create`,
and MCP clients that carry a bearer token."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.sse import sse_client
from mcp.client.streamable_http import streamable_http_client


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, object]]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=5) as response:
        return response.status, json.loads(response.read())


def pao_env(database_url: str, tmp_path: Path, mcp_config: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "PAO_DATA_DIR": str(tmp_path / "data"),
        "PAO_MCP_CONFIG": str(mcp_config),
        "PAO_LOG_LEVEL": "WARNING",
        **extra,
    }


def pao(
    args: list[str],
    database_url: str,
    tmp_path: Path,
    mcp_config: Path,
    *,
    stderr: int | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "pao_orchestrator.server.cli", *args],
        env=env or pao_env(database_url, tmp_path, mcp_config),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=stderr,
    )


def create_agent(database_url: str, tmp_path: Path, mcp_config: Path, name: str, scopes: str) -> str:
    """`pao agents create`; the token it prints once."""
    proc = pao(
        ["agents", "create", "--name", name, "--scopes", scopes],
        database_url,
        tmp_path,
        mcp_config,
        stderr=subprocess.PIPE,
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    token = lines[-1].rsplit(" ", 1)[-1]
    assert token.startswith("pao_"), lines
    return token


def wait_healthy(proc: subprocess.Popen[bytes], base: str, timeout: float = 60) -> None:
    """Wait until `GET /health` answers 200 (or the server exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if get(f"{base}/health")[0] == 200:
                return
        except (OSError, urllib.error.URLError):
            pass
        if proc.poll() is not None:
            raise RuntimeError(f"pao serve exited with {proc.returncode}")
        time.sleep(0.1)
    raise TimeoutError(f"{base}/health did not answer within {timeout}s")


def auth_headers(token: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"} if token else {}


@asynccontextmanager
async def http_client(base: str, token: str | None) -> AsyncIterator[Client]:
    """An MCP client over streamable HTTP at `base`/mcp, sending `token`."""
    async with (
        httpx2.AsyncClient(headers=auth_headers(token), timeout=httpx2.Timeout(30, read=300)) as http,
        Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client,
    ):
        yield client


@asynccontextmanager
async def sse(base: str, token: str | None) -> AsyncIterator[Client]:
    async with Client(sse_client(f"{base}/sse", headers=auth_headers(token))) as client:
        yield client


def post(base: str, body: bytes, headers: dict[str, str]) -> httpx2.Response:
    """A raw POST to /mcp (for what an MCP client would never send)."""
    return httpx2.post(
        f"{base}/mcp",
        content=body,
        headers={"Content-Type": "application/json", "Accept": "application/json, text/event-stream", **headers},
        timeout=30,
    )
