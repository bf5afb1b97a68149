"""A task's life after create_task: update, snooze, pause, resume, cancel; and previewing a schedule.

Each change locks the task row, writes the new state and one audit entry in one
transaction, and NOTIFYs pao_tasks so every scheduler re-reads when to wake.
Runs the scheduler created ahead of their instant (reservations, see
engine.scheduler) are withdrawn whenever a change could make them wrong.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import asyncpg
from pydantic import BaseModel, Field

from pao_orchestrator.engine import access, audit
from pao_orchestrator.engine import schedule as schedules
from pao_orchestrator.engine.models import Agent, Task, TaskSpec
from pao_orchestrator.engine.runtime import fires_between, fires_span
from pao_orchestrator.engine.tasks import (
    KEY_FIELDS,
    TRIGGER_FIELDS,
    Clock,
    ToolCatalog,
    check_keys,
    check_pipeline,
    check_probe_tool,
    check_trigger_fields,
    first_fire,
    schedule_anchor,
    to_task,
)
from pao_orchestrator.engine.validation import parse
from pao_orchestrator.errors import Conflict, InvalidArgument
from pao_orchestrator.store import AgentRecord, RunBatch, TaskRecord
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import RunStatus, ScheduleKind, TaskStatus

SCHEDULE_FIELDS = ("schedule_kind", "schedule_expr", "timezone")
MAX_SNOOZE_SECONDS = 366 * 86_400
_TICK = timedelta(microseconds=1)


class TaskChange(BaseModel):
    """A task after a life-cycle call."""

    task: Task
    changed: bool = Field(description="False when the task already was as asked: the call changed nothing.")
    message: str = Field(description="What happened, in a sentence to repeat to the user.")
    warnings: list[str] = Field(default_factory=list, description="What could not be checked (update_task).")


class CancelledTask(TaskChange):
    cancelled_runs: list[UUID] = Field(description="Queued runs that were cancelled.")
    stopping_runs: list[UUID] = Field(description="Running runs asked to stop before their next step.")


class FireInstant(BaseModel):
    at: str = Field(description="ISO 8601 in the schedule's timezone, with its offset.")
    utc: str = Field(description="The same instant in UTC.")
    display: str = Field(description="For people: 'Mon 30 Mar 2026 08:30:00 EEST'.")


class SchedulePreview(BaseModel):
    schedule_kind: str
    schedule_expr: str
    timezone: str
    fires: list[FireInstant]
    note: str | None = None


def _instant(value: datetime, tz: Any) -> FireInstant:
    return FireInstant(
        at=schedules.format_local(value, tz),
        utc=value.astimezone(schedules.load_timezone("UTC")).isoformat().replace("+00:00", "Z"),
        display=value.astimezone(tz).strftime("%a %d %b %Y %H:%M:%S %Z"),
    )


def _schedule_of(row: TaskRecord) -> schedules.Schedule:
    return schedules.parse_schedule(row.schedule_kind, row.schedule_expr, row.timezone, anchor=row.anchor)


def _next_text(task: Task) -> str:
    return f"next fire {task.next_fires[0]}" if task.next_fires else "no fire scheduled"


async def _finish(
    conn: asyncpg.Connection, caller: Agent, action: str, row: TaskRecord, details: dict[str, Any]
) -> Task:
    await audit.record(conn, caller, action, "task", row.id, details)
    await task_store.notify_changed(conn, row.id)
    return to_task(row)


async def _withdraw(conn: asyncpg.Connection, row: TaskRecord, why: str) -> datetime | None:
    """Withdraw reservations; the task's next fire moves back to the earliest withdrawn instant."""
    withdrawn = await run_store.withdraw_reservations(conn, row.id, f"withdrawn: {why}")
    candidates = [t for t in (row.next_fire_at, *withdrawn) if t is not None]
    return min(candidates) if candidates else None


def _spec_fields(row: TaskRecord) -> dict[str, Any]:
    return {name: getattr(row, name) for name in TaskSpec.model_fields}


async def update_task(
    db: asyncpg.Pool,
    catalog: ToolCatalog,
    caller: Agent,
    task_id: UUID,
    changes: dict[str, Any],
    *,
    clock: Clock,
) -> TaskChange:
    """Change any create_task field; the result is validated exactly as create_task validates."""
    unknown = sorted(set(changes) - set(TaskSpec.model_fields))
    if unknown:
        raise InvalidArgument(unknown[0], "is not a task field; update_task takes the fields of create_task")
    if not changes:
        raise InvalidArgument("", "nothing to change: give at least one field, e.g. schedule_expr or title")
    # An empty dedupe_key / concurrency_key removes it (null means "unchanged" in the tool's schema).
    changes = {k: (None if k in ("dedupe_key", "concurrency_key") and v == "" else v) for k, v in changes.items()}
    warnings: list[str] = []
    if "payload" in changes:
        # Probing downstream servers can take seconds: do it before the row is locked.
        async with db.acquire() as conn:
            current = await access.task(conn, caller, task_id)
        warnings = await check_pipeline(parse(TaskSpec, {**_spec_fields(current), **changes}).payload, catalog)
    now = clock()
    async with db.acquire() as conn, conn.transaction():
        row = await access.task(conn, caller, task_id, for_update=True)
        if row.status == TaskStatus.CANCELLED:
            raise Conflict(f"task {task_id} is cancelled, which is final; create a new task instead")
        merged = {**_spec_fields(row), **changes}
        if "schedule_kind" in changes:
            # A new kind drops the stored fields only the old kind used (filter, probe, when),
            # unless this call sets them.
            for name, kind in TRIGGER_FIELDS.items():
                if name not in changes and merged.get("schedule_kind") != kind:
                    merged[name] = None
        spec = parse(TaskSpec, merged)
        if any(name in changes for name in (*KEY_FIELDS, "schedule_kind")):
            check_keys(spec)
        if any(name in changes for name in (*TRIGGER_FIELDS, "schedule_kind")):
            check_trigger_fields(spec)
            check_probe_tool(spec, catalog)
        fields = spec.model_dump(mode="json", by_alias=True)
        changed = sorted(name for name in fields if fields[name] != getattr(row, name))
        fields.update(
            status=row.status,
            next_fire_at=row.next_fire_at,
            schedule_anchor=row.schedule_anchor,
            snoozed_until=row.snoozed_until,
        )
        rescheduled = any(name in changed for name in SCHEDULE_FIELDS)
        if rescheduled:
            anchor = schedule_anchor(now)
            fields["next_fire_at"] = first_fire(spec, now=now, anchor=anchor)
            fields["schedule_anchor"] = anchor
            await _withdraw(conn, row, "the schedule changed")
            if row.status == TaskStatus.COMPLETED:
                fields["status"] = TaskStatus.ACTIVE  # a new schedule brings a finished task back
        if changed:
            row = await task_store.update_fields(conn, task_id, fields)
        task = await _finish(conn, caller, "update_task", row, {"fields": changed, "rescheduled": rescheduled})
    if not changed:
        message = "nothing changed: the task already had these values"
    else:
        message = f"updated {', '.join(changed)}" + (f"; {_next_text(task)}" if rescheduled else "")
    return TaskChange(task=task, changed=bool(changed), message=message, warnings=warnings)


def _parse_until(until: str, now: datetime) -> datetime:
    try:
        value = datetime.fromisoformat(until)
    except (TypeError, ValueError):
        raise InvalidArgument(
            "until", f"{until!r} is not an ISO 8601 instant; e.g. '2026-03-30T08:00:00+03:00'"
        ) from None
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidArgument("until", f"{until!r} has no UTC offset; add one, e.g. '{until}+03:00' or '{until}Z'")
    if value <= now:
        raise InvalidArgument("until", f"{until!r} is not in the future (now is {now.isoformat()})")
    return value


async def snooze(
    db: asyncpg.Pool,
    caller: Agent,
    task_id: UUID,
    *,
    seconds: float | None,
    until: str | None,
    clock: Clock,
) -> TaskChange:
    """No fire before the snooze ends; then the schedule resumes by itself. A new snooze replaces the old."""
    now = clock()
    if (seconds is None) == (until is None):
        raise InvalidArgument("seconds", "give exactly one of seconds (e.g. 3600) or until (an ISO 8601 instant)")
    if seconds is not None:
        if not 0 < seconds <= MAX_SNOOZE_SECONDS:
            raise InvalidArgument("seconds", f"{seconds} must be more than 0 and at most {MAX_SNOOZE_SECONDS}")
        end = now + timedelta(seconds=seconds)
    else:
        assert until is not None
        end = _parse_until(until, now)
    async with db.acquire() as conn, conn.transaction():
        row = await access.task(conn, caller, task_id, for_update=True)
        if row.status != TaskStatus.ACTIVE:
            hint = {TaskStatus.PAUSED: "resume_task it first", TaskStatus.COMPLETED: "its schedule has no fire left"}
            raise Conflict(
                f"task {task_id} is {row.status}; only an active task can be snoozed"
                + (f" ({hint[row.status]})" if row.status in hint else "")
            )
        next_fire_at = await _withdraw(conn, row, "task snoozed")
        row = await task_store.set_state(
            conn, task_id, status=TaskStatus.ACTIVE, next_fire_at=next_fire_at, snoozed_until=end
        )
        task = await _finish(conn, caller, "snooze", row, {"until": end.isoformat()})
    local = schedules.format_local(end, schedules.load_timezone(task.timezone))
    return TaskChange(task=task, changed=True, message=f"snoozed until {local}; {_next_text(task)}")


async def pause_task(db: asyncpg.Pool, caller: Agent, task_id: UUID, *, clock: Clock) -> TaskChange:
    """Stop firing until resume_task; runs already queued or running are left alone. Idempotent."""
    async with db.acquire() as conn, conn.transaction():
        row = await access.task(conn, caller, task_id, for_update=True)
        if row.status in (TaskStatus.CANCELLED, TaskStatus.COMPLETED):
            raise Conflict(f"task {task_id} is {row.status}; there is nothing to pause")
        if row.status == TaskStatus.PAUSED:
            return TaskChange(task=to_task(row), changed=False, message="already paused")
        next_fire_at = await _withdraw(conn, row, "task paused")
        row = await task_store.set_state(
            conn,
            task_id,
            status=TaskStatus.PAUSED,
            next_fire_at=next_fire_at,
            snoozed_until=row.snoozed_until,
            paused_reason=f"paused by {caller.name} (pause_task)",
        )
        task = await _finish(conn, caller, "pause_task", row, {})
    return TaskChange(task=task, changed=True, message="paused: no fire until resume_task")


async def pause_tasks_of_agent(conn: asyncpg.Connection, caller: Agent, agent: AgentRecord) -> list[UUID]:
    """Pause every task of `agent` that may still fire, as pause_task would (delete_agent: whatever the
    agent set up stops acting on its behalf; an admin can resume a task to keep it). Runs already
    queued are cancelled, running ones left to finish. The caller holds the transaction."""
    reason = f"paused: its agent {agent.name!r} was deleted by {caller.name} (delete_agent)"
    paused = []
    for row in await task_store.lock_live_of_agent(conn, agent.id):
        next_fire_at = await _withdraw(conn, row, reason)
        queued = [
            run_id for run_id, status in await run_store.active_of_task(conn, row.id) if status == RunStatus.QUEUED
        ]
        await run_store.cancel_many(conn, queued, [reason] * len(queued))
        row = await task_store.set_state(
            conn,
            row.id,
            status=TaskStatus.PAUSED,
            next_fire_at=next_fire_at,
            snoozed_until=row.snoozed_until,
            paused_reason=reason,
        )
        await _finish(conn, caller, "pause_task", row, {"reason": reason, "cancelled_runs": [str(i) for i in queued]})
        paused.append(row.id)
    return paused


async def resume_task(db: asyncpg.Pool, caller: Agent, task_id: UUID, *, clock: Clock) -> TaskChange:
    """Fire again from now: a paused task resumes, a snoozed one wakes early. Fires that fell in the pause
    are not run (pausing was a decision, not an outage); one skipped run records them. The pause's reason
    is cleared and consecutive failures are counted afresh (see `pause_after_failures`)."""
    now = clock()
    async with db.acquire() as conn, conn.transaction():
        row = await access.task(conn, caller, task_id, for_update=True)
        if row.status == TaskStatus.CANCELLED:
            raise Conflict(f"task {task_id} is cancelled, which is final; create a new task instead")
        if row.status == TaskStatus.COMPLETED:
            raise Conflict(
                f"task {task_id} is completed: its schedule has no fire left; give it a new one with update_task"
            )
        if row.status == TaskStatus.ACTIVE and row.snoozed_until is None:
            return TaskChange(task=to_task(row), changed=False, message="already active")
        schedule = _schedule_of(row)
        upcoming = schedule.next_after(now)
        next_fire_at = upcoming
        summary = None
        if row.status == TaskStatus.PAUSED and schedule.is_time_based and row.next_fire_at is not None:
            summary = await _record_paused(conn, row, schedule, now)
        elif row.status == TaskStatus.ACTIVE and row.next_fire_at is not None and upcoming is not None:
            next_fire_at = min(row.next_fire_at, upcoming)  # an overdue fire stays the scheduler's to decide
        status = TaskStatus.ACTIVE if next_fire_at is not None or not schedule.is_time_based else TaskStatus.COMPLETED
        row = await task_store.set_state(conn, task_id, status=status, next_fire_at=next_fire_at, snoozed_until=None)
        task = await _finish(conn, caller, "resume_task", row, {"paused_fires": summary})
    message = (
        f"resumed; {_next_text(task)}" if status == TaskStatus.ACTIVE else "resumed, but no fire is left: completed"
    )
    return TaskChange(task=task, changed=True, message=message + (f" ({summary})" if summary else ""))


async def _record_paused(
    conn: asyncpg.Connection, row: TaskRecord, schedule: schedules.Schedule, now: datetime
) -> str | None:
    """One skipped run at the newest fire that fell in the pause, saying how many did."""
    assert row.next_fire_at is not None
    missed = fires_between(schedule, row.next_fire_at, now + _TICK)
    if missed is None:
        return None
    last = missed.newest[-1]
    text = fires_span(missed, missed.count, last, schedule.tz)
    batch = RunBatch()
    batch.add(
        row.id,
        RunStatus.SKIPPED,
        last,
        priority=row.priority,
        max_attempts=1,
        reason=f"not run: the task was paused ({text})",
    )
    await run_store.insert_batch(conn, batch)
    return f"{text} fell in the pause and were not run" if missed.count > 1 else f"{text} fell in the pause"


async def cancel_task(
    db: asyncpg.Pool, caller: Agent, task_id: UUID, *, stop_running: bool, clock: Clock
) -> CancelledTask:
    """Final: no more fires; queued runs are cancelled, running ones asked to stop (unless stop_running=False)."""
    async with db.acquire() as conn, conn.transaction():
        row = await access.task(conn, caller, task_id, for_update=True)
        if row.status == TaskStatus.CANCELLED:
            return CancelledTask(
                task=to_task(row), changed=False, message="already cancelled", cancelled_runs=[], stopping_runs=[]
            )
        reason = f"task cancelled by {caller.name} (cancel_task)"
        targets = [
            run_id
            for run_id, status in await run_store.active_of_task(conn, task_id)
            if stop_running or status == RunStatus.QUEUED
        ]
        outcome = await run_store.cancel_many(conn, targets, [reason] * len(targets))
        row = await task_store.set_state(
            conn, task_id, status=TaskStatus.CANCELLED, next_fire_at=None, snoozed_until=None
        )
        cancelled = [i for i, status in outcome.items() if status == RunStatus.CANCELLED]
        stopping = [i for i, status in outcome.items() if status == RunStatus.RUNNING]
        task = await _finish(
            conn,
            caller,
            "cancel_task",
            row,
            {"cancelled_runs": [str(i) for i in cancelled], "stopping_runs": [str(i) for i in stopping]},
        )
    message = f"cancelled; {len(cancelled)} queued run(s) cancelled, {len(stopping)} running run(s) stopping"
    return CancelledTask(task=task, changed=True, message=message, cancelled_runs=cancelled, stopping_runs=stopping)


def preview_schedule(
    schedule_kind: str, schedule_expr: str, timezone: str, *, count: int, after: str | None, now: datetime
) -> SchedulePreview:
    """The next `count` fires after `after` (default now), as create_task would schedule them."""
    start: datetime | None = None
    if after is not None:
        try:
            start = datetime.fromisoformat(after)
        except ValueError:
            raise InvalidArgument("after", f"{after!r} is not ISO 8601; e.g. '2026-03-29T00:00:00+02:00'") from None
    expr = schedule_expr.strip()
    # An rrule without DTSTART starts where the task would be created: at `after` when it is given.
    aware = start is not None and start.utcoffset() is not None
    anchor = schedule_anchor(start if start is not None and aware else now)
    instants = schedules.preview(schedule_kind, expr, timezone, count=count, after=start, now=now, anchor=anchor)
    tz = schedules.load_timezone(timezone)
    note = None
    if schedule_kind == ScheduleKind.EVENT:
        note = "event tasks fire when a matching event is published, never on a clock"
    elif schedule_kind == ScheduleKind.CONDITION:
        note = "condition tasks are polled at these instants and fire when the condition holds"
    elif not instants:
        note = "this schedule has no fire after " + schedules.format_local(start or now, tz)
    return SchedulePreview(
        schedule_kind=schedule_kind,
        schedule_expr=expr,
        timezone=timezone,
        fires=[_instant(i, tz) for i in instants],
        note=note,
    )
