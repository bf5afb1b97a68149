"""Who sees what: an agent sees and changes only its own tasks and their runs, unless it is admin.

Another agent's object answers exactly as a missing one ("does not exist"), so ids cannot be
probed. `created_by` always comes from the caller, never from arguments.
"""

from __future__ import annotations

from uuid import UUID

import asyncpg

from pao_orchestrator.engine.models import Agent
from pao_orchestrator.errors import NotFound
from pao_orchestrator.store import TaskRecord
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import tasks as task_store


def owner_filter(caller: Agent) -> UUID | None:
    """The `created_by` a listing is limited to: the caller's own id, or None (everything) for admins."""
    return None if caller.is_admin else caller.id


async def task(conn: asyncpg.Connection, caller: Agent, task_id: UUID, *, for_update: bool = False) -> TaskRecord:
    """The task if the caller may see it; NotFound (the same as for a missing task) otherwise."""
    row = await task_store.get(conn, task_id, for_update=for_update)
    if not caller.sees(row.created_by):
        raise NotFound(f"task {task_id} does not exist; list_tasks shows the tasks you can see")
    return row


async def run(conn: asyncpg.Connection, caller: Agent, run_id: UUID) -> None:
    """NotFound unless the run exists and the caller may see it (the same answer either way)."""
    if caller.is_admin:
        return
    if not caller.sees(await run_store.owner(conn, run_id)):
        raise NotFound(f"run {run_id} does not exist; list_runs shows recent runs")
