"""The admin tools: agents, their tokens, and the audit log (scope `admin`).

Thin adapters like server/tools.py: one engine call each, structured results.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated
from uuid import UUID

from mcp_types import ToolAnnotations
from pydantic import BaseModel, Field, Strict

from pao_orchestrator.contracts import MAX_DESCRIPTION_CHARS
from pao_orchestrator.engine import Agent, AgentInfo, AuditEntry, CreatedAgent, Engine, UpdatedAgent
from pao_orchestrator.errors import InvalidArgument
from pao_orchestrator.server.metadata import READ, WRITE, Cursor, Limit, tool_errors
from pao_orchestrator.server.toolset import ToolSet
from pao_orchestrator.vocabulary import Scope

DELETE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)

AgentId = Annotated[str, Field(description="The agent's id.")]
AgentName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", description="Unique name.")
]
Scopes = Annotated[
    list[Scope],
    Field(max_length=6, description="admin may do everything, on every agent's objects."),
]  # fmt: skip
ExpiresIn = Annotated[
    int | None,
    Strict(),
    Field(ge=60, le=10 * 366 * 86_400, description="Token lifetime; omit: no expiry."),
]


class AgentList(BaseModel):
    agents: list[AgentInfo]
    next_cursor: str | None


class AuditList(BaseModel):
    entries: list[AuditEntry]
    next_cursor: str | None = Field(description="Pass as cursor for older entries; null when this is the last page.")


def _uuid(value: str, field: str) -> UUID:
    try:
        return UUID(value)
    except ValueError:
        raise InvalidArgument(field, f"{value[:60]!r} is not an id; list_agents shows agent ids") from None


def register_admin_tools(tools: ToolSet, engine: Engine, caller: Callable[[], Agent]) -> None:
    """Register create_agent, list_agents, get_agent, update_agent, delete_agent and list_audit."""

    @tools.tool(name="create_agent", title="Create agent", annotations=WRITE)
    @tool_errors
    async def create_agent(
        name: AgentName,
        scopes: Scopes,
        description: Annotated[str, Field(max_length=MAX_DESCRIPTION_CHARS, description="Free text for people.")] = "",
        expires_in_seconds: ExpiresIn = None,
    ) -> CreatedAgent:
        """Create an agent and its first bearer token, shown only here (pao keeps a hash)."""
        return await engine.create_agent(
            caller(),
            name=name,
            scopes=[s.value for s in scopes],
            description=description,
            expires_in_seconds=expires_in_seconds,
        )

    @tools.tool(name="list_agents", title="List agents", annotations=READ)
    @tool_errors
    async def list_agents(
        include_deleted: Annotated[bool, Strict(), Field(description="Also list deleted agents.")] = False,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AgentList:
        """Agents, newest first, with scopes and token ids (never tokens)."""
        agents, next_cursor = await engine.list_agents(
            caller(), include_deleted=include_deleted, limit=limit, cursor=cursor
        )
        return AgentList(agents=agents, next_cursor=next_cursor)

    @tools.tool(name="get_agent", title="Get agent", annotations=READ)
    @tool_errors
    async def get_agent(agent_id: AgentId) -> AgentInfo:
        """One agent (deleted ones too), with its tokens' ids, expiry and state."""
        return await engine.get_agent(caller(), _uuid(agent_id, "agent_id"))

    @tools.tool(name="update_agent", title="Update agent", annotations=WRITE)
    @tool_errors
    async def update_agent(
        agent_id: AgentId,
        name: AgentName | None = None,
        scopes: Scopes | None = None,
        description: Annotated[
            str | None, Field(max_length=MAX_DESCRIPTION_CHARS, description="Free text for people.")
        ] = None,
        new_token: Annotated[bool, Strict(), Field(description="Issue another token.")] = False,
        expires_in_seconds: ExpiresIn = None,
        revoke_token_id: Annotated[str | None, Field(description="Token id to revoke.")] = None,
    ) -> UpdatedAgent:
        """Change an agent's name, scopes or description; issue or revoke a token. Omitted fields stay."""
        return await engine.update_agent(
            caller(),
            _uuid(agent_id, "agent_id"),
            name=name,
            scopes=[s.value for s in scopes] if scopes is not None else None,
            description=description,
            new_token=new_token,
            expires_in_seconds=expires_in_seconds,
            revoke_token_id=_uuid(revoke_token_id, "revoke_token_id") if revoke_token_id else None,
        )

    @tools.tool(name="delete_agent", title="Delete agent", annotations=DELETE)
    @tool_errors
    async def delete_agent(agent_id: AgentId) -> AgentInfo:
        """Delete an agent: its tokens stop at once; its history stays readable by admins."""
        return await engine.delete_agent(caller(), _uuid(agent_id, "agent_id"))

    @tools.tool(name="list_audit", title="List audit log", annotations=READ)
    @tool_errors
    async def list_audit(
        agent_id: Annotated[str | None, Field(description="Agent id.")] = None,
        action: Annotated[str | None, Field(max_length=64, description="e.g. create_task.")] = None,
        target_type: Annotated[str | None, Field(max_length=32, description="task, run, agent...")] = None,
        target_id: Annotated[str | None, Field(max_length=200, description="Target id.")] = None,
        since: Annotated[datetime | None, Field(description="ISO 8601, inclusive.")] = None,
        until: Annotated[datetime | None, Field(description="ISO 8601, exclusive.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AuditList:
        """The audit log, newest first: changes, admin actions and refusals."""
        entries, next_cursor = await engine.list_audit(
            caller(),
            agent_id=_uuid(agent_id, "agent_id") if agent_id else None,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )
        return AuditList(entries=entries, next_cursor=next_cursor)
