"""The downstream server registry: which MCP servers pipeline steps may call.

The file is the `mcp.json` other MCP clients already read (Claude Desktop,
Cursor, VS Code), so an existing one can be reused as is::

    {"mcpServers": {
        "time":   {"command": "uvx", "args": ["mcp-server-time"], "env": {"TZ": "UTC"}},
        "github": {"url": "https://api.example.com/mcp", "type": "http",
                   "headers": {"Authorization": "Bearer ${env:GITHUB_TOKEN}"}}
    }}

A `command` makes a stdio server, a `url` a remote one (`transport`, or `type`
as VS Code writes it: `streamable-http` (alias `http`, the default) or `sse`).
VS Code's top-level `servers` key is accepted in place of `mcpServers`; keys
this module does not know (`disabled`, `autoApprove`, ...) are ignored.

String values may reference the environment as `${env:NAME}`. References are
checked for syntax when the file is loaded but resolved only when a server is
connected, so a resolved secret never lives in a stored object.

A stdio server inherits the parent's environment plus its own `env`, except
for the variables in which this process keeps its own secrets (`PAO_SECRET_*`,
`DATABASE_URL`, `REDIS_URL`, `PAO_TOKEN`): those reach a child only when its
`env` names them explicitly (e.g. `"DATABASE_URL": "${env:DATABASE_URL}"`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from mcp.client.stdio import StdioServerParameters
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pao_orchestrator.contracts import BUILTIN_SERVER, SECRET_ENV_PREFIX
from pao_orchestrator.errors import InvalidArgument

__all__ = [
    "RESERVED_SERVER_NAMES",
    "WITHHELD_ENV_PREFIXES",
    "WITHHELD_ENV_VARS",
    "MissingEnvironmentVariable",
    "Registry",
    "RemoteServer",
    "ServerEntry",
    "StdioServer",
    "is_withheld",
    "load_registry",
    "resolve_env_refs",
]

RESERVED_SERVER_NAMES = frozenset({BUILTIN_SERVER})
"""Names steps use for built-in actions (`pao.<action>`); no mcp.json entry may take them."""

WITHHELD_ENV_VARS = frozenset({"DATABASE_URL", "REDIS_URL", "PAO_TOKEN"})
WITHHELD_ENV_PREFIXES = (SECRET_ENV_PREFIX,)
"""Our own secrets: not inherited by stdio servers unless their `env` names them."""

_SERVER_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ENV_REF = re.compile(r"\$\{env:([A-Za-z_][A-Za-z0-9_]*)\}")
_ENV_REF_START = "${env:"

_TRANSPORT_ALIASES: dict[str, str] = {
    "stdio": "stdio",
    "sse": "sse",
    "http": "streamable-http",
    "streamable-http": "streamable-http",
    "streamable_http": "streamable-http",
    "streamablehttp": "streamable-http",
}


class MissingEnvironmentVariable(InvalidArgument):
    """A `${env:NAME}` reference in an mcp.json entry names a variable that is not set."""

    def __init__(self, server: str, variable: str, field: str) -> None:
        self.server = server
        self.variable = variable
        super().__init__(
            f"mcpServers.{server}.{field}",
            f"environment variable {variable!r} is not set "
            f"(referenced as ${{env:{variable}}} by downstream server {server!r} in mcp.json)",
        )


def is_withheld(variable: str) -> bool:
    """Whether `variable` is one of our secrets that children do not inherit by default."""
    return variable in WITHHELD_ENV_VARS or variable.startswith(WITHHELD_ENV_PREFIXES)


def resolve_env_refs(value: str, *, server: str, field: str, environ: Mapping[str, str]) -> str:
    """Replace every `${env:NAME}` in `value` with the variable's value.

    Raises MissingEnvironmentVariable (naming the variable and the server) when one is unset.
    """

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        resolved = environ.get(name)
        if resolved is None:
            raise MissingEnvironmentVariable(server, name, field)
        return resolved

    return _ENV_REF.sub(substitute, value)


def _check_refs(value: str, where: str) -> None:
    """Reject a malformed `${env:...}` reference (unterminated, empty or not a variable name)."""
    start = value.find(_ENV_REF_START)
    while start != -1:
        match = _ENV_REF.match(value, start)
        if match is None:
            raise ValueError(
                f"{where}: malformed environment reference in {value!r}; "
                "write ${env:NAME} with NAME made of letters, digits and '_'"
            )
        start = value.find(_ENV_REF_START, match.end())


class _Entry(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


def _locate(command: str, environ: Mapping[str, str]) -> str:
    """A bare command found on PATH, else next to our own interpreter.

    MCP clients start `.venv/bin/pao` without activating the venv, so servers
    installed beside pao (like `mcp-server-time`) are not on PATH; look there too.
    """
    if os.sep in command or shutil.which(command, path=environ.get("PATH")):
        return command
    sibling = Path(sys.executable).parent / command
    return str(sibling) if sibling.is_file() and os.access(sibling, os.X_OK) else command


class StdioServer(_Entry):
    """A server we launch as a child process and talk to over its stdin/stdout."""

    transport: Literal["stdio"] = "stdio"
    command: str = Field(min_length=1)
    args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = None

    @model_validator(mode="after")
    def _refs_are_well_formed(self) -> StdioServer:
        _check_refs(self.command, "command")
        for i, arg in enumerate(self.args):
            _check_refs(arg, f"args[{i}]")
        for key, value in self.env.items():
            _check_refs(value, f"env.{key}")
        if self.cwd is not None:
            _check_refs(self.cwd, "cwd")
        return self

    def child_environment(self, server: str, parent: Mapping[str, str]) -> dict[str, str]:
        """The child's full environment: `parent` (ours) minus withheld secrets, plus the entry's resolved `env`."""
        env = {key: value for key, value in parent.items() if not is_withheld(key)}
        for key, value in self.env.items():
            env[key] = resolve_env_refs(value, server=server, field=f"env.{key}", environ=parent)
        return env

    def parameters(self, server: str, parent: Mapping[str, str]) -> StdioServerParameters:
        """Resolve every reference now (at connect time) into the SDK's launch parameters.

        `parent` is our own environment (the child inherits it, minus withheld secrets).
        """
        command = resolve_env_refs(self.command, server=server, field="command", environ=parent)
        return StdioServerParameters(
            command=_locate(command, parent),
            args=[
                resolve_env_refs(arg, server=server, field=f"args[{i}]", environ=parent)
                for i, arg in enumerate(self.args)
            ],
            env=self.child_environment(server, parent),
            cwd=(
                None
                if self.cwd is None
                else os.path.expanduser(resolve_env_refs(self.cwd, server=server, field="cwd", environ=parent))
            ),
        )

    def describe(self) -> str:
        """A one-line description safe to show (references unresolved)."""
        return " ".join([self.command, *self.args])


class RemoteServer(_Entry):
    """A server reached over HTTP: streamable HTTP (the default) or the older SSE transport."""

    url: str = Field(min_length=1)
    transport: Literal["sse", "streamable-http"] = "streamable-http"
    headers: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _accept_aliases(cls, data: Any) -> Any:
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        kind = data.pop("type", None)
        if kind is not None and data.get("transport") is None:
            data["transport"] = kind
        transport = data.get("transport")
        if isinstance(transport, str):
            data["transport"] = _TRANSPORT_ALIASES.get(transport.lower(), transport)
        return data

    @model_validator(mode="after")
    def _refs_are_well_formed(self) -> RemoteServer:
        _check_refs(self.url, "url")
        if not re.match(r"(?i)(https?://|\$\{env:)", self.url):
            raise ValueError(f"url: {self.url!r} is not an http:// or https:// URL")
        for key, value in self.headers.items():
            _check_refs(value, f"headers.{key}")
        return self

    def resolved_url(self, server: str, environ: Mapping[str, str]) -> str:
        return resolve_env_refs(self.url, server=server, field="url", environ=environ)

    def resolved_headers(self, server: str, environ: Mapping[str, str]) -> dict[str, str]:
        return {
            key: resolve_env_refs(value, server=server, field=f"headers.{key}", environ=environ)
            for key, value in self.headers.items()
        }

    def describe(self) -> str:
        return f"{self.url} ({self.transport})"


ServerEntry = StdioServer | RemoteServer


def _check_name(name: str) -> None:
    if name.lower() in RESERVED_SERVER_NAMES:
        raise InvalidArgument(
            f"mcpServers.{name}",
            f"the server name {name!r} is reserved for pao's built-in steps (pao.<action>); "
            "rename this entry in mcp.json",
        )
    if not _SERVER_NAME.fullmatch(name):
        raise InvalidArgument(
            f"mcpServers.{name}",
            f"invalid server name {name!r}: use only letters, digits, '_' and '-' "
            "(steps address tools as <server>.<tool>, so no dots)",
        )


def _parse_entry(name: str, raw: Any) -> ServerEntry:
    field = f"mcpServers.{name}"
    if not isinstance(raw, Mapping):
        raise InvalidArgument(field, f"expected an object, got {type(raw).__name__}")
    # JSON nulls mean "not given" (some editors write "env": null).
    data = {key: value for key, value in raw.items() if value is not None}
    has_command = "command" in data
    has_url = "url" in data
    declared = data.get("transport", data.get("type"))
    if isinstance(declared, str):
        declared = _TRANSPORT_ALIASES.get(declared.lower(), declared)
    if has_command and has_url:
        raise InvalidArgument(field, "give either 'command' (a stdio server) or 'url' (a remote server), not both")
    if not has_command and not has_url:
        raise InvalidArgument(field, "missing 'command' (for a stdio server) or 'url' (for a remote server)")
    model: type[StdioServer] | type[RemoteServer]
    if has_command:
        if declared not in (None, "stdio"):
            raise InvalidArgument(field, f"transport {declared!r} needs a 'url', not a 'command'")
        data.pop("type", None)
        data["transport"] = "stdio"
        model = StdioServer
    else:
        if declared == "stdio":
            raise InvalidArgument(field, "a stdio server needs a 'command', not a 'url'")
        model = RemoteServer
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(part) for part in first["loc"])
        message = first["msg"].removeprefix("Value error, ")
        problems = f" (and {exc.error_count() - 1} more problem(s))" if exc.error_count() > 1 else ""
        raise InvalidArgument(f"{field}.{loc}" if loc else field, message + problems) from None


class Registry(BaseModel):
    """The configured downstream servers, by name."""

    model_config = ConfigDict(frozen=True)

    servers: dict[str, StdioServer | RemoteServer] = Field(default_factory=dict)

    @field_validator("servers")
    @classmethod
    def _names_are_valid(cls, servers: dict[str, ServerEntry]) -> dict[str, ServerEntry]:
        for name in servers:
            _check_name(name)
        return servers

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, source: str = "mcp.json") -> Registry:
        """Build a registry from a parsed mcp.json document.

        Raises InvalidArgument naming the offending entry and field.
        """
        if not isinstance(data, Mapping):
            raise InvalidArgument(source, f"expected a JSON object at the top level, got {type(data).__name__}")
        if "mcpServers" in data and "servers" in data:
            raise InvalidArgument(source, "give either 'mcpServers' or 'servers', not both")
        raw_servers = data.get("mcpServers", data.get("servers", {}))
        if raw_servers is None:
            raw_servers = {}
        if not isinstance(raw_servers, Mapping):
            raise InvalidArgument(f"{source}: mcpServers", "expected an object mapping server names to entries")
        servers: dict[str, ServerEntry] = {}
        for name, raw in raw_servers.items():
            _check_name(str(name))
            servers[str(name)] = _parse_entry(str(name), raw)
        return cls(servers=servers)

    def names(self) -> list[str]:
        return sorted(self.servers)

    def get(self, name: str) -> ServerEntry | None:
        return self.servers.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self.servers


def load_registry(path: Path | None) -> Registry:
    """Read mcp.json; no path or a missing file gives an empty registry."""
    if path is None:
        return Registry()
    path = path.expanduser()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Registry()
    except OSError as exc:
        raise InvalidArgument(str(path), f"cannot read the downstream server registry: {exc}") from None
    if not text.strip():
        return Registry()
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidArgument(str(path), f"not valid JSON: {exc}") from None
    return Registry.from_dict(data, source=str(path))
