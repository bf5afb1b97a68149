"""A task that keeps failing stops firing: `pause_after_failures: N` pauses it after N failed runs in a row.

The count is read from the runs themselves (the task's newest finished runs since it was last
resumed), not kept in a counter, so it is right whichever worker recorded which failure, and a
check that was missed (a crash between a run's end and this check) is made good by the next one.
"""

from __future__ import annotations

import logging
from uuid import UUID

import asyncpg

from pao_orchestrator.store import DATABASE_ERRORS
from pao_orchestrator.store import audit as audit_store
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import TaskStatus

log = logging.getLogger(__name__)


async def pause_if_failing(conn: asyncpg.Connection, task_id: UUID) -> bool:
    """Pause the task if its last `pause_after_failures` finished runs all failed; True when it did.

    Locks the task row, so two workers recording failures of one task at once pause it once.
    """
    async with conn.transaction():
        task = await task_store.get(conn, task_id, for_update=True)
        if task.pause_after_failures is None or task.status != TaskStatus.ACTIVE:
            return False
        failures = await task_store.consecutive_failures(conn, task)
        if failures < task.pause_after_failures:
            return False
        withdrawn = await run_store.withdraw_reservations(conn, task_id, "withdrawn: task paused after failures")
        candidates = [t for t in (task.next_fire_at, *withdrawn) if t is not None]
        reason = (
            f"paused after {failures} consecutive failed run(s) (pause_after_failures={task.pause_after_failures}); "
            "list_runs shows their errors, resume_task fires it again"
        )
        await task_store.set_state(
            conn,
            task_id,
            status=TaskStatus.PAUSED,
            next_fire_at=min(candidates) if candidates else None,
            snoozed_until=task.snoozed_until,
            paused_reason=reason,
        )
        await audit_store.record(
            conn,
            agent_id=None,
            action="pause_after_failures",
            target_type="task",
            target_id=str(task_id),
            details={"failures": failures},
        )
        await task_store.notify_changed(conn, task_id)
    log.warning("task %s: %s", task_id, reason)
    return True


async def after_failure(db: asyncpg.Pool, task_id: UUID) -> None:
    """A run of the task failed for good (in a worker, or by the lease sweep): pause the task if that
    makes pause_after_failures in a row. Its own transaction after the run's end is recorded; should it
    not happen (a crash in between, the database away), the next failure counts the same runs and
    pauses the task then."""
    try:
        async with db.acquire() as conn:
            await pause_if_failing(conn, task_id)
    except DATABASE_ERRORS as exc:
        log.warning("task %s: could not check its consecutive failures (%s)", task_id, exc)
