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

AgentId = Annotated[str, Field(description="The agent's id, as create_agent or list_agents returned it.")]
AgentName = Annotated[
    str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.@-]*$", description="Unique name.")
]
Scopes = Annotated[
    list[Scope],
    Field(max_length=6, description="What the agent may do: tasks:read, tasks:write, runs:read, runs:write, "
          "events:publish, admin (admin may do everything and sees every agent's tasks and runs)."),
]  # fmt: skip
ExpiresIn = Annotated[
    int | None,
    Strict(),
    Field(ge=60, le=10 * 366 * 86_400, description="Seconds until the token expires; omit for no expiry."),
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
        """Create an agent with scopes and its first bearer token. The token is in this answer only:
        pao stores a hash of it. Give it to the agent's MCP client as 'Authorization: Bearer <token>'."""
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
        """List agents, newest first, with their scopes and tokens (ids and expiry, never the tokens)."""
        agents, next_cursor = await engine.list_agents(
            caller(), include_deleted=include_deleted, limit=limit, cursor=cursor
        )
        return AgentList(agents=agents, next_cursor=next_cursor)

    @tools.tool(name="get_agent", title="Get agent", annotations=READ)
    @tool_errors
    async def get_agent(agent_id: AgentId) -> AgentInfo:
        """Get one agent (deleted ones too): scopes, description and its tokens' ids, expiry and state."""
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
        new_token: Annotated[bool, Strict(), Field(description="Issue another token (shown once).")] = False,
        expires_in_seconds: ExpiresIn = None,
        revoke_token_id: Annotated[str | None, Field(description="Revoke this token of the agent.")] = None,
    ) -> UpdatedAgent:
        """Change an agent's name, scopes or description; issue a new token or revoke one (rotation:
        new_token, hand it over, then revoke the old one). Omitted fields stay as they are."""
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
        """Delete an agent: its tokens stop working at once. Its record, tasks, runs and audit entries stay
        readable by admins (get_agent, list_audit). The local owner cannot be deleted. Idempotent."""
        return await engine.delete_agent(caller(), _uuid(agent_id, "agent_id"))

    @tools.tool(name="list_audit", title="List audit log", annotations=READ)
    @tool_errors
    async def list_audit(
        agent_id: Annotated[str | None, Field(description="Only entries of this agent.")] = None,
        action: Annotated[str | None, Field(max_length=64, description="Only this action, e.g. create_task.")] = None,
        target_type: Annotated[str | None, Field(max_length=32, description="task, run, agent, token, tool...")] = None,
        target_id: Annotated[str | None, Field(max_length=200, description="Only entries about this id.")] = None,
        since: Annotated[datetime | None, Field(description="Entries at or after this ISO 8601 instant.")] = None,
        until: Annotated[datetime | None, Field(description="Entries before this ISO 8601 instant.")] = None,
        limit: Limit = 50,
        cursor: Cursor = None,
    ) -> AuditList:
        """Read the audit log, newest first: every change, every admin action and every refused
        authentication or authorization, with who, what, target, when, request id and outcome."""
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
