"""The mcp.json registry: parsing, validation, `${env:NAME}` resolution at connect time, env inheritance."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from pao_orchestrator.engine.downstream.registry import (
    MissingEnvironmentVariable,
    Registry,
    RemoteServer,
    StdioServer,
    is_withheld,
    load_registry,
    resolve_env_refs,
)
from pao_orchestrator.errors import InvalidArgument, PaoError


def test_stdio_entry_parses_with_defaults() -> None:
    registry = Registry.from_dict(
        {
            "mcpServers": {
                "time": {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"}, "cwd": "/tmp"},
                "bare": {"command": "server", "type": "stdio"},
            }
        }
    )
    time = registry.servers["time"]
    assert isinstance(time, StdioServer)
    assert (time.command, time.args, time.env, time.cwd) == (
        "uvx",
        ["mcp-server-time"],
        {"TZ": "UTC"},
        "/tmp",
    )
    bare = registry.servers["bare"]
    assert isinstance(bare, StdioServer)
    assert (bare.args, bare.env, bare.cwd) == ([], {}, None)
    assert registry.names() == ["bare", "time"]
    assert "time" in registry
    assert registry.get("nope") is None


def test_remote_entries_and_transport_aliases() -> None:
    registry = Registry.from_dict(
        {
            "mcpServers": {
                "default": {"url": "https://example.com/mcp"},
                "vscode": {"url": "https://example.com/mcp", "type": "http", "headers": {"X-Key": "k"}},
                "old": {"url": "http://localhost:9000/sse", "transport": "sse"},
                "typed_sse": {"url": "http://localhost:9000/sse", "type": "sse"},
                "explicit": {"url": "http://localhost:9000/mcp", "transport": "streamable-http"},
            }
        }
    )
    transports = {name: entry.transport for name, entry in registry.servers.items()}
    assert all(isinstance(entry, RemoteServer) for entry in registry.servers.values())
    assert transports == {
        "default": "streamable-http",
        "vscode": "streamable-http",
        "old": "sse",
        "typed_sse": "sse",
        "explicit": "streamable-http",
    }
    vscode = registry.servers["vscode"]
    assert isinstance(vscode, RemoteServer)
    assert vscode.headers == {"X-Key": "k"}


def test_vscode_servers_key_and_unknown_keys_are_accepted() -> None:
    registry = Registry.from_dict(
        {"servers": {"time": {"command": "x", "disabled": False, "autoApprove": []}}, "inputs": []}
    )
    assert registry.names() == ["time"]


def test_empty_documents() -> None:
    assert Registry.from_dict({}).servers == {}
    assert Registry.from_dict({"mcpServers": None}).servers == {}
    assert Registry.from_dict({"mcpServers": {"a": {"command": "x", "env": None, "args": None}}}).names() == ["a"]


@pytest.mark.parametrize("name", ["pao", "PAO"])
def test_reserved_name_pao_is_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Registry.from_dict({"mcpServers": {name: {"command": "x"}}})
    assert "reserved" in str(info.value)
    assert "built-in" in str(info.value)
    with pytest.raises(Exception, match="reserved"):
        Registry(servers={name: StdioServer(command="x")})


@pytest.mark.parametrize("name", ["my.server", "has space", "", "ümlaut"])
def test_invalid_server_names_are_rejected(name: str) -> None:
    with pytest.raises(InvalidArgument, match="invalid server name"):
        Registry.from_dict({"mcpServers": {name: {"command": "x"}}})


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"command": "x", "url": "http://h/mcp"}, "not both"),
        ({"args": ["a"]}, "missing 'command'"),
        ({"command": "x", "type": "sse"}, "needs a 'url'"),
        ({"url": "http://h/mcp", "type": "stdio"}, "needs a 'command'"),
        ({"url": "http://h/mcp", "transport": "websocket"}, "transport"),
        ({"url": "ftp://h/x"}, "not an http"),
        ({"command": ""}, "command"),
        ({"command": "x", "args": "not-a-list"}, "args"),
        ({"command": "x", "env": {"N": 1}}, "env.N"),
        ("just a string", "expected an object"),
    ],
)
def test_bad_entries_name_the_server_and_field(entry: object, message: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        Registry.from_dict({"mcpServers": {"srv": entry}})
    assert "mcpServers.srv" in str(info.value)
    assert message in str(info.value)
    assert isinstance(info.value, PaoError)


@pytest.mark.parametrize("bad", ["${env:}", "${env:A B}", "prefix ${env:OPEN", "${env:1X}"])
def test_malformed_env_references_are_rejected_at_load(bad: str) -> None:
    with pytest.raises(InvalidArgument, match="malformed environment reference"):
        Registry.from_dict({"mcpServers": {"s": {"command": "x", "args": [bad]}}})
    with pytest.raises(InvalidArgument, match="malformed environment reference"):
        Registry.from_dict({"mcpServers": {"s": {"url": "http://h/mcp", "headers": {"A": bad}}}})


def test_env_references_resolve_at_connect_time_not_at_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PAO_TEST_TOKEN", raising=False)
    registry = Registry.from_dict(
        {
            "mcpServers": {
                "local": {
                    "command": "${env:PAO_TEST_BIN}/server",
                    "args": ["--token=${env:PAO_TEST_TOKEN}", "plain"],
                    "env": {"API_KEY": "${env:PAO_TEST_TOKEN}", "MIXED": "a-${env:PAO_TEST_BIN}-b"},
                    "cwd": "${env:PAO_TEST_BIN}",
                },
                "remote": {
                    "url": "https://h/${env:PAO_TEST_BIN}/mcp",
                    "headers": {"Authorization": "Bearer ${env:PAO_TEST_TOKEN}"},
                },
            }
        }
    )
    # Loading needs no variable, and the stored object keeps the references, never the secrets.
    dumped = registry.model_dump_json()
    assert "${env:PAO_TEST_TOKEN}" in dumped
    monkeypatch.setenv("PAO_TEST_TOKEN", "s3cret")
    monkeypatch.setenv("PAO_TEST_BIN", "/opt/bin")
    assert "s3cret" not in registry.model_dump_json()

    local = registry.servers["local"]
    assert isinstance(local, StdioServer)
    params = local.parameters("local", os.environ)
    assert params.command == "/opt/bin/server"
    assert params.args == ["--token=s3cret", "plain"]
    assert params.cwd == "/opt/bin"
    assert params.env is not None
    assert params.env["API_KEY"] == "s3cret"
    assert params.env["MIXED"] == "a-/opt/bin-b"

    remote = registry.servers["remote"]
    assert isinstance(remote, RemoteServer)
    assert remote.resolved_url("remote", os.environ) == "https://h//opt/bin/mcp"
    assert remote.resolved_headers("remote", os.environ) == {"Authorization": "Bearer s3cret"}


def test_missing_variable_names_the_variable_and_the_server() -> None:
    entry = StdioServer(command="x", env={"KEY": "${env:PAO_TEST_SURELY_UNSET}"})
    with pytest.raises(MissingEnvironmentVariable) as info:
        entry.parameters("weather", {})
    message = str(info.value)
    assert "PAO_TEST_SURELY_UNSET" in message
    assert "'weather'" in message
    assert info.value.variable == "PAO_TEST_SURELY_UNSET"
    assert info.value.server == "weather"
    assert isinstance(info.value, InvalidArgument)
    with pytest.raises(MissingEnvironmentVariable, match="PAO_TEST_SURELY_UNSET"):
        RemoteServer(url="http://h/mcp", headers={"A": "${env:PAO_TEST_SURELY_UNSET}"}).resolved_headers(
            "weather", environ={}
        )
    assert resolve_env_refs("no refs, $HOME, ${HOME}", server="s", field="f", environ={}) == ("no refs, $HOME, ${HOME}")


def test_child_environment_inherits_but_withholds_our_secrets() -> None:
    parent = {
        "PATH": "/usr/bin",
        "HOME": "/home/me",
        "PAO_SECRET_GITHUB": "ghp_x",
        "DATABASE_URL": "postgres://me:pw@db/pao",
        "REDIS_URL": "redis://r",
        "PAO_TOKEN": "tok",
        "PAO_OTHER": "visible",
    }
    plain = StdioServer(command="x", env={"TZ": "UTC"})
    env = plain.child_environment("s", parent)
    assert env == {"PATH": "/usr/bin", "HOME": "/home/me", "PAO_OTHER": "visible", "TZ": "UTC"}

    explicit = StdioServer(
        command="x",
        env={"GITHUB_TOKEN": "${env:PAO_SECRET_GITHUB}", "DATABASE_URL": "${env:DATABASE_URL}"},
    )
    env = explicit.child_environment("s", parent)
    assert env["GITHUB_TOKEN"] == "ghp_x"
    assert env["DATABASE_URL"] == "postgres://me:pw@db/pao"
    assert "PAO_SECRET_GITHUB" not in env
    assert "REDIS_URL" not in env
    assert "PAO_TOKEN" not in env
    assert is_withheld("PAO_SECRET_ANYTHING")
    assert not is_withheld("PAO_SECRETS")


def test_load_registry_files(tmp_path: Path) -> None:
    assert load_registry(None).servers == {}
    assert load_registry(tmp_path / "missing.json").servers == {}
    empty = tmp_path / "empty.json"
    empty.write_text("  \n")
    assert load_registry(empty).servers == {}

    good = tmp_path / "mcp.json"
    good.write_text(json.dumps({"mcpServers": {"time": {"command": "uvx", "args": ["mcp-server-time"]}}}))
    assert load_registry(good).names() == ["time"]

    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        load_registry(broken)

    top = tmp_path / "list.json"
    top.write_text("[]")
    with pytest.raises(InvalidArgument, match="top level"):
        load_registry(top)

    reserved = tmp_path / "reserved.json"
    reserved.write_text(json.dumps({"mcpServers": {"pao": {"command": "x"}}}))
    with pytest.raises(InvalidArgument, match="reserved"):
        load_registry(reserved)

    with pytest.raises(InvalidArgument, match="cannot read"):
        load_registry(tmp_path)  # a directory


def test_bare_command_installed_beside_the_interpreter_is_found_without_path() -> None:
    """Clients start .venv/bin/pao without activating the venv; mcp-server-time still resolves."""
    registry = Registry.from_dict({"mcpServers": {"time": {"command": "mcp-server-time"}}})
    entry = registry.get("time")
    assert isinstance(entry, StdioServer)
    params = entry.parameters("time", {"PATH": "/nonexistent"})
    assert params.command == str(Path(sys.executable).parent / "mcp-server-time")
