"""Condition tasks: poll a probe step, fire the pipeline when `when` turns from false to true.

A quiet probe writes no run: only the task's `probe_state` (value, time, error, whether `when`
held), which get_task shows. The pipeline fires on the edge (false -> true), not on every poll
while it holds. A probe that fails is recorded and retried sooner (never taken for "false": the
edge is judged against the last answer the probe did give).

Probers claim due condition tasks with SKIP LOCKED and a lease on `next_fire_at` (see
`claim_due_conditions`), so replicas never probe one task twice; probe instants keep the phase the
task was created with (a random point in its first interval), so conditions spread over time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import asyncpg

from pao_orchestrator.contracts import BUILTIN_SERVER
from pao_orchestrator.engine import templating
from pao_orchestrator.engine.runtime import storable
from pao_orchestrator.engine.runtime.arguments import validate_arguments
from pao_orchestrator.engine.runtime.builtins import BUILTINS, call_builtin
from pao_orchestrator.engine.runtime.enqueuing import enqueue, serial_key
from pao_orchestrator.engine.runtime.executor import ToolCaller
from pao_orchestrator.engine.runtime.pipeline import PipelineStep
from pao_orchestrator.engine.schedule import parse_schedule
from pao_orchestrator.errors import PaoError, StepError
from pao_orchestrator.store import DATABASE_ERRORS, ProbeClaim
from pao_orchestrator.store import tasks as task_store
from pao_orchestrator.vocabulary import Trigger

log = logging.getLogger(__name__)

DEFAULT_PROBE_TIMEOUT: Final = 30.0
# A claimed task is leased for its probe's timeout plus this margin (its outcome's write included).
LEASE_MARGIN: Final = 10.0
MAX_RETRY_SECONDS: Final = 300.0
MAX_STATE_BYTES: Final = 65_536


def _now() -> datetime:
    return datetime.now(UTC)


class Prober:
    """Probes the due condition tasks of all replicas' share, `batch` at a time."""

    def __init__(
        self,
        db: asyncpg.Pool,
        tools: ToolCaller,
        *,
        secrets: Mapping[str, str],
        batch: int = 50,
        poll_interval: float = 1.0,
    ) -> None:
        self._db = db
        self._tools = tools
        self._secrets = dict(secrets)
        templating.check_secrets(self._secrets)  # once here, not per probe
        self._batch = batch
        self._poll = poll_interval
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        backoff = 0.5
        while not self._stopping.is_set():
            try:
                claimed = await self.probe_due()
                backoff = 0.5
            except Exception as exc:
                level = logging.WARNING if isinstance(exc, DATABASE_ERRORS) else logging.ERROR
                log.log(level, "probing conditions failed (%r); retrying in %.1fs", exc, backoff)
                claimed, backoff = 0, min(backoff * 2, 30.0)
                await asyncio.sleep(backoff)
                continue
            if claimed >= self._batch:
                continue
            timeout = self._poll
            try:
                async with self._db.acquire() as conn:
                    due_in = await task_store.next_condition_due(conn)
                if due_in is not None:
                    timeout = min(timeout, max(due_in, 0.01))
            except DATABASE_ERRORS:
                pass
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=timeout)

    async def stop(self) -> None:
        self._stopping.set()

    async def probe_due(self) -> int:
        """Claim and probe one batch of due condition tasks; returns how many were claimed."""
        async with self._db.acquire() as conn:
            claims = await task_store.claim_due_conditions(
                conn, limit=self._batch, default_timeout=DEFAULT_PROBE_TIMEOUT, margin=LEASE_MARGIN
            )
        outcomes = await asyncio.gather(*(self._probe(claim) for claim in claims), return_exceptions=True)
        for claim, outcome in zip(claims, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                if isinstance(outcome, DATABASE_ERRORS):
                    raise outcome
                # One task that cannot be probed (its schedule no longer parses, a bug) is logged and
                # probed again when its lease ends; the others of the batch are not held up.
                log.error("condition task %s could not be probed: %r", claim.task.id, outcome)
        return len(claims)

    async def _probe(self, claim: ProbeClaim) -> None:
        task = claim.task
        previous = task.probe_state or {}
        secrets = templating.Secrets(self._secrets, checked=True)
        now = _now()
        state: dict[str, Any] = {"at": now.isoformat(), "value": None, "error": None}
        result: Any = None
        try:
            if task.probe is None or task.when is None:
                raise StepError("this condition task has no probe or no when; update_task to add them", retryable=False)
            step = PipelineStep.model_validate(task.probe)
            t0 = time.perf_counter()
            result = await self._call(step, task, secrets, now)
            holds = self._holds(task.when, result, task, now)
            state.update(value=result, holds=holds, failures=0, ms=round((time.perf_counter() - t0) * 1000, 1))
        except Exception as exc:
            if not isinstance(exc, PaoError):
                log.exception("condition task %s: the probe crashed", task.id)
            failures = int(previous.get("failures", 0)) + 1
            state.update(error=str(exc), holds=previous.get("holds"), failures=failures, value=previous.get("value"))
            holds = None
        used = secrets.used_values()
        state = templating.redact(state, used) if used else state
        if storable.problem(state, MAX_STATE_BYTES) is not None:
            state = {
                **state,
                "value": None,
                "error": state["error"] or f"the probe's value is over {MAX_STATE_BYTES} bytes",
            }
        interval = parse_schedule(task.schedule_kind, task.schedule_expr, task.timezone, anchor=task.anchor).interval
        assert interval is not None
        if holds is None:
            # A failed probe is retried sooner than the interval: 2, 4, 8 ... seconds.
            retry = min(2.0 ** min(state["failures"], 20), MAX_RETRY_SECONDS, interval.total_seconds())
            next_at = now + timedelta(seconds=retry)
        else:
            next_at = claim.due_at + interval
            if next_at <= now:  # late (a long probe, a stopped process): skip ahead, keeping the phase
                behind = (now - claim.due_at) // interval
                next_at = claim.due_at + interval * (behind + 1)
        fire = holds is True and previous.get("holds") is not True
        async with self._db.acquire() as conn, conn.transaction():
            held = await task_store.record_probe(
                conn,
                task.id,
                leased_until=claim.leased_until,
                state=state,
                next_probe_at=next_at,
                fired_at=now if fire else None,
            )
            if held and fire:
                await enqueue(
                    conn,
                    task,
                    trigger=Trigger.CONDITION,
                    trigger_data={"condition": {"result": state["value"]}},
                    scheduled_for=now,
                    created_by=None,
                    default_concurrency_key=serial_key(task.id, task.overlap_policy),
                )

    async def _call(self, step: PipelineStep, task: Any, secrets: templating.Secrets, now: datetime) -> Any:
        arguments: Any = step.with_
        if templating.is_templated(arguments):
            context = {"task": {"id": str(task.id), "title": task.title}, "now": now.isoformat(), "secrets": secrets}
            arguments = templating.render(arguments, context, field="probe.with", limit=MAX_STATE_BYTES)
        if not isinstance(arguments, dict):
            raise StepError("probe.with must render to an object", retryable=False)
        timeout = step.timeout_seconds or DEFAULT_PROBE_TIMEOUT
        async with asyncio.timeout(timeout + 1):
            if step.server == BUILTIN_SERVER:
                builtin = BUILTINS.get(step.tool)
                if builtin is None or step.tool == "publish_event":
                    raise StepError(f"{step.uses} cannot be a probe", retryable=False)
                validate_arguments(step.uses, builtin.input_schema, arguments)
                return await call_builtin(step.tool, arguments)
            validate_arguments(step.uses, await self._tools.tool_schema(step.server, step.tool), arguments)
            output = await self._tools.call_tool(step.server, step.tool, arguments, timeout=timeout)
        if output.is_error:
            raise StepError(f"{step.uses} returned an error: {output.text}", retryable=True)
        return output.value

    @staticmethod
    def _holds(when: str, value: Any, task: Any, now: datetime) -> bool:
        context = {"probe": value, "task": {"id": str(task.id), "title": task.title}, "now": now.isoformat()}
        return bool(templating.render(when, context, field="when", limit=10_000))
