"""Creating tasks and reading them back: validation happens here, before anything is written."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any, Protocol
from uuid import UUID

import asyncpg
from pydantic import BaseModel

from pao_orchestrator.contracts import BUILTIN_SERVER
from pao_orchestrator.engine import access, audit, templating
from pao_orchestrator.engine import schedule as schedules
from pao_orchestrator.engine.models import Agent, Task, TaskSpec
from pao_orchestrator.engine.paging import decode_cursor, page
from pao_orchestrator.engine.runtime import BUILTINS, Payload, PipelineStep, validate_arguments
from pao_orchestrator.engine.validation import parse
from pao_orchestrator.errors import InvalidArgument, PaoError, StepError
from pao_orchestrator.store import TaskRecord
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import TIME_KINDS, ScheduleKind, TaskStatus

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
PREVIEW_COUNT = 5
KEY_ROOTS = frozenset({"trigger", "event", "task", "now"})
KEY_FIELDS = ("dedupe_key", "concurrency_key")


def check_keys(spec: TaskSpec) -> None:
    """dedupe_key and concurrency_key must be simple templates reading what this task's runs provide.

    They are rendered while a scheduler pass or run_now creates the run, so they may not loop or
    build values (see templating's simple templates), and `${event...}` is refused on a task that
    no event starts.
    """
    roots = set(KEY_ROOTS)
    absent: dict[str, str] = {}
    if spec.schedule_kind != ScheduleKind.EVENT:
        roots.discard("event")
        absent["event"] = (
            f"is set only for runs an event starts, and this task is schedule_kind={spec.schedule_kind.value!r}; "
            "use ${trigger.scheduled_for}, ${task.id} or literal text"
        )
    for name in KEY_FIELDS:
        value = getattr(spec, name)
        if value is not None:
            templating.check_template(value, name, roots, (), simple_only=True, absent=absent)


FILTER_ROOTS = frozenset({"event", "task", "now"})
PROBE_ROOTS = frozenset({"task", "now", "secrets"})
WHEN_ROOTS = frozenset({"probe", "task", "now"})
TRIGGER_FIELDS: dict[str, ScheduleKind] = {
    "filter": ScheduleKind.EVENT,
    "probe": ScheduleKind.CONDITION,
    "when": ScheduleKind.CONDITION,
}


def _expression(value: str, name: str, roots: frozenset[str]) -> None:
    if "${" not in value:
        raise InvalidArgument(
            name, f"{value[:80]!r} is not an expression; write it as ${{...}}, e.g. {_EXAMPLES[name]}"
        )
    templating.check_template(value, name, roots, (), simple_only=True)


_EXAMPLES = {
    "filter": "'${event.data.sender == \"boss@example.com\"}'",
    "when": "'${probe.count > 0}'",
}


def check_trigger_fields(spec: TaskSpec) -> None:
    """`filter` belongs to event tasks; `probe` and `when` to condition tasks, which need both.

    They are evaluated while events are matched and conditions polled, outside any run, so they
    must be simple templates (reading values, cheap filters, comparisons), checked here.
    """
    for name, kind in TRIGGER_FIELDS.items():
        if getattr(spec, name) is not None and spec.schedule_kind != kind:
            raise InvalidArgument(
                name, f"applies to schedule_kind={kind.value!r} only; this task is {spec.schedule_kind.value!r}"
            )
    if spec.schedule_kind == ScheduleKind.EVENT and spec.filter is not None:
        _expression(spec.filter, "filter", FILTER_ROOTS)
    if spec.schedule_kind == ScheduleKind.CONDITION:
        if spec.probe is None:
            raise InvalidArgument(
                "probe",
                "a condition task needs a probe step, e.g. {'uses': 'time.get_current_time', 'with': {...}}",
            )
        if spec.when is None:
            raise InvalidArgument("when", f"a condition task needs a when expression, e.g. {_EXAMPLES['when']}")
        templating.check_template(spec.probe.with_, "probe.with", PROBE_ROOTS, (), simple_only=True)
        _expression(spec.when, "when", WHEN_ROOTS)


class ToolCatalog(Protocol):
    """What task validation needs to know about downstream servers."""

    def server_names(self) -> list[str]: ...

    async def tool_schema(self, server: str, tool: str) -> dict[str, Any] | None: ...


class CreatedTask(BaseModel):
    task: Task
    warnings: list[str]


def next_fires(task: TaskRecord, count: int = PREVIEW_COUNT) -> list[str]:
    """The next `count` fires that will run, from the stored next fire, as ISO 8601 in the task's zone.

    A snooze hides the fires before its end; a paused or finished task has none.
    """
    if task.next_fire_at is None or task.schedule_kind not in TIME_KINDS or task.status != TaskStatus.ACTIVE:
        return []
    # update_task re-anchors a changed schedule (an rrule without DTSTART counts from then).
    schedule = schedules.parse_schedule(task.schedule_kind, task.schedule_expr, task.timezone, anchor=task.anchor)
    first: datetime | None = task.next_fire_at
    snoozed_until = task.snoozed_until
    if first is not None and snoozed_until is not None and first < snoozed_until:
        first = schedule.next_after(snoozed_until - timedelta(microseconds=1))
    if first is None:
        return []
    instants = [first, *schedule.upcoming(first, count - 1)]
    return [schedules.format_local(i, schedule.tz) for i in instants]


def to_task(row: TaskRecord) -> Task:
    """A stored task as tools return it. One whose schedule no longer evaluates (its zone left tzdata,
    say) is still returned, with `schedule_error` saying why it has no next fires: one bad row never
    breaks a list for everyone."""
    try:
        fires, problem = next_fires(row), None
    except Exception as exc:
        if not isinstance(exc, PaoError):
            log.exception("task %s: its next fires could not be computed", row.id)
        fires, problem = [], str(exc)
    return Task.model_validate({**row.as_dict(), "next_fires": fires, "schedule_error": problem})


def _steps(payload: Payload) -> list[tuple[str, PipelineStep]]:
    """Every step of a payload with its field path: the pipeline, then the on_failure steps."""
    return [(f"payload.pipeline[{i}]", s) for i, s in enumerate(payload.pipeline)] + [
        (f"payload.on_failure[{i}]", s) for i, s in enumerate(payload.on_failure)
    ]


def check_probe_tool(spec: TaskSpec, catalog: ToolCatalog) -> None:
    """A condition's probe names a built-in step or a server of mcp.json (its arguments are checked
    against the tool's schema at each probe)."""
    if spec.probe is None:
        return
    _check_step(spec.probe, "probe", set(catalog.server_names()))


def _check_step(step: PipelineStep, path: str, known: set[str]) -> None:
    """`uses` names a built-in or a server of mcp.json; a built-in's literal arguments fit its schema
    (they are final: checked now, so the worker need not on every run)."""
    if step.server == BUILTIN_SERVER:
        if step.tool not in BUILTINS:
            raise InvalidArgument(
                f"{path}.uses",
                f"'{step.uses}' is not a built-in step; built-ins are: "
                + ", ".join(f"pao.{name}" for name in sorted(BUILTINS)),
            )
        if not templating.is_templated(step.with_):
            try:
                validate_arguments(step.uses, BUILTINS[step.tool].input_schema, step.with_)
            except StepError as exc:
                raise InvalidArgument(f"{path}.with", str(exc)) from None
    elif step.server not in known:
        configured = ", ".join(sorted(known)) or "none"
        raise InvalidArgument(
            f"{path}.uses",
            f"server '{step.server}' is not in mcp.json (configured: {configured}; built-in: pao). "
            "list_downstream_tools shows what pipelines may use",
        )


async def check_pipeline(payload: Payload, catalog: ToolCatalog, *, probe_timeout: float = 15.0) -> list[str]:
    """Check every step (the pipeline's and on_failure's) before the task is saved; return warnings for
    what could not be checked."""
    known = set(catalog.server_names())
    steps = _steps(payload)
    for path, step in steps:
        _check_step(step, path, known)
    pipeline = [s.model_dump(by_alias=True) for s in payload.pipeline]
    templating.check_pipeline_templates(pipeline, allowed_roots=templating.ALLOWED_ROOTS)
    if payload.on_failure:
        # on_failure steps may read what the pipeline's steps produced (those that ran) and ${run.error}.
        templating.check_pipeline_templates(
            [s.model_dump(by_alias=True) for s in payload.on_failure],
            allowed_roots=templating.ALLOWED_ROOTS,
            field="payload.on_failure",
            preceding=pipeline,
        )
    warnings: list[str] = []
    schemas: dict[tuple[str, str], dict[str, Any] | None] = {}
    # One probe per distinct (server, tool), reported against the first step that uses it.
    first_use: dict[tuple[str, str], str] = {}
    for path, step in steps:
        if step.server != BUILTIN_SERVER:
            first_use.setdefault((step.server, step.tool), path)

    async def probe(server: str, tool: str, path: str) -> None:
        try:
            async with asyncio.timeout(probe_timeout):
                schemas[(server, tool)] = await catalog.tool_schema(server, tool)
        except StepError as exc:
            if not exc.retryable:
                raise InvalidArgument(f"{path}.uses", str(exc)) from None
            warnings.append(f"server '{server}' could not be reached to check '{server}.{tool}': {exc}")
        except TimeoutError:
            warnings.append(f"server '{server}' did not list its tools within {probe_timeout:.0f}s; not checked")

    await asyncio.gather(*(probe(server, tool, path) for (server, tool), path in first_use.items()))
    for path, step in steps:
        schema = schemas.get((step.server, step.tool))
        if not schema:
            continue
        missing = [name for name in schema.get("required", []) if name not in step.with_]
        if missing:
            props = ", ".join(sorted(schema.get("properties", {}))) or "none"
            raise InvalidArgument(
                f"{path}.with",
                f"'{step.uses}' requires {', '.join(repr(m) for m in missing)} (its arguments: {props})",
            )
        literal_problem = check_literals(step.uses, schema, step.with_)
        if literal_problem is not None:
            raise InvalidArgument(f"{path}.with", literal_problem)
        if schema.get("additionalProperties") is False:
            extra = sorted(set(step.with_) - set(schema.get("properties", {})))
            if extra:
                raise InvalidArgument(
                    f"{path}.with",
                    f"'{step.uses}' takes no argument {', '.join(repr(e) for e in extra)}; "
                    f"its arguments: {', '.join(sorted(schema.get('properties', {})))}",
                )
    return warnings


def check_literals(uses: str, schema: dict[str, Any], arguments: dict[str, Any]) -> str | None:
    """What is wrong with the literal (untemplated) arguments of a step under the tool's schema, or None.

    Only literal values are final at save time; a templated one is checked when it is rendered.
    """
    properties = schema.get("properties")
    if not isinstance(properties, dict):
        return None
    literal = {k: v for k, v in arguments.items() if k in properties and not templating.is_templated(v)}
    if not literal:
        return None
    partial = {key: value for key, value in schema.items() if key not in ("required", "additionalProperties")}
    partial["properties"] = {k: properties[k] for k in literal}
    try:
        validate_arguments(uses, partial, literal)
    except StepError as exc:
        return str(exc)
    return None


def schedule_anchor(now: datetime) -> datetime:
    """The task's creation instant, truncated to a whole second.

    An rrule without DTSTART starts at midnight of this instant's day and counts COUNT
    from the occurrences strictly after it. Occurrences fall on whole seconds, so
    "after the truncated instant" is "after `now`": a COUNT=3 rule fires three times.
    """
    return now.replace(microsecond=0)


def first_fire(spec: TaskSpec, *, now: datetime, anchor: datetime) -> datetime | None:
    """Validate the schedule and return its first fire (None for event tasks)."""
    schedule = schedules.validate_schedule(
        spec.schedule_kind, spec.schedule_expr, spec.timezone, now=now, anchor=anchor
    )
    if schedule.interval is not None:
        # A condition's first probe falls anywhere in its first interval: conditions created together
        # (or by one script) keep probing at instants spread over the interval, not all at once.
        return now + schedule.interval * random.random()
    return schedule.next_after(now)


async def create_task(
    db: asyncpg.Pool, catalog: ToolCatalog, caller: Agent, arguments: dict[str, Any], *, clock: Clock
) -> CreatedTask:
    """Validate everything, then write the task and its audit entry in one transaction."""
    spec = parse(TaskSpec, arguments)
    now = clock()
    anchor = schedule_anchor(now)
    next_fire_at = first_fire(spec, now=now, anchor=anchor)
    check_keys(spec)
    check_trigger_fields(spec)
    check_probe_tool(spec, catalog)
    warnings = await check_pipeline(spec.payload, catalog)
    fields = spec.model_dump(mode="json", by_alias=True)
    fields["status"] = TaskStatus.ACTIVE
    fields["next_fire_at"] = next_fire_at
    async with db.acquire() as conn, conn.transaction():
        row = await task_store.insert(conn, fields, created_by=caller.id, now=anchor)
        # Built before the commit: if the stored task cannot be shown, nothing is kept.
        task = to_task(row)
        await audit.record(
            conn,
            caller,
            "create_task",
            "task",
            row.id,
            {"title": spec.title, "schedule_kind": spec.schedule_kind, "schedule_expr": spec.schedule_expr},
        )
        await task_store.notify_changed(conn, row.id)
    return CreatedTask(task=task, warnings=warnings)


async def get_task(db: asyncpg.Pool, caller: Agent, task_id: UUID) -> Task:
    async with db.acquire() as conn:
        return to_task(await access.task(conn, caller, task_id))


async def list_tasks(
    db: asyncpg.Pool,
    caller: Agent,
    *,
    status: TaskStatus | None,
    schedule_kind: ScheduleKind | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[Task], str | None]:
    """Tasks newest first, a page at a time: the caller's own, or every agent's for an admin."""
    before = decode_cursor(cursor)
    async with db.acquire() as conn:
        rows = await task_store.list_page(
            conn,
            status=status,
            schedule_kind=schedule_kind,
            before=before,
            limit=limit + 1,
            created_by=access.owner_filter(caller),
        )
    rows, next_cursor = page(rows, limit)
    return [to_task(r) for r in rows], next_cursor
