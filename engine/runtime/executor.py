"""Execute one claimed run: render each step, call its tool, record what happened.

Every step is written to `run_steps` as soon as it ends, so a crash loses at
most the step in flight. A retry (or a run taken over after a lost lease)
resumes at the first step that has not succeeded; earlier outputs are reused,
never recomputed. A secret reaches only the arguments of a downstream call: an
output that echoes one is masked (***) before it is stored *and* before later
steps read it, so no template can transform a secret into something masking
would miss; an output with a secret in an object key fails its step.

Before each step the worker makes sure it still holds the run's lease, so a
worker that was stopped (SIGSTOP, a long GC pause, a frozen VM) past its lease
does not call a downstream tool for a run another worker has taken over. Every
write it makes is fenced on the lease as well. A step's rendered arguments and
its output must be storable (no NUL, no NaN, at most PAO_MAX_VALUE_BYTES): one
that is not fails that step, with an error that says why, before anything of
it is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg

from pao_orchestrator.contracts import BUILTIN_SERVER
from pao_orchestrator.engine import templating
from pao_orchestrator.engine.runtime import storable
from pao_orchestrator.engine.runtime.arguments import validate_arguments
from pao_orchestrator.engine.runtime.backoff import backoff_delay
from pao_orchestrator.engine.runtime.builtins import BUILTINS, call_builtin
from pao_orchestrator.engine.runtime.completions import Completions
from pao_orchestrator.engine.runtime.enqueuing import trigger_view
from pao_orchestrator.engine.runtime.events import EventLimits, NewEvent, check_event, publish
from pao_orchestrator.engine.runtime.failures import after_failure
from pao_orchestrator.engine.runtime.pipeline import Payload, PipelineStep
from pao_orchestrator.engine.runtime.renderer import Renderer
from pao_orchestrator.errors import InvalidArgument, StepError
from pao_orchestrator.metrics import Metrics
from pao_orchestrator.store import ClaimedRun, Completion, StepRecord
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.store import steps as step_store
from pao_orchestrator.vocabulary import Outcome, RunStatus, StepStatus

log = logging.getLogger(__name__)


class ToolCaller(Protocol):
    """What the executor needs from the downstream pool."""

    async def call_tool(
        self, server: str, tool: str, arguments: dict[str, Any], *, timeout: float | None = None
    ) -> Any: ...

    async def tool_schema(self, server: str, tool: str) -> dict[str, Any] | None: ...


_LEASE_CLOCK = getattr(time, "CLOCK_BOOTTIME", time.CLOCK_MONOTONIC)


def lease_clock() -> float:
    """Seconds on a clock that keeps counting while the process is stopped or the machine sleeps
    (CLOCK_BOOTTIME where there is one)."""
    return time.clock_gettime(_LEASE_CLOCK)


@dataclass
class RunHandle:
    """A run this worker holds, what it knows of its lease, and the flag an agent's cancel_run sets."""

    run: ClaimedRun
    lease_seconds: float = 30.0
    # A lease_clock() reading until which the lease is surely held: read before the claim or renewal
    # that set the lease, plus its length (the database set it later, so it lasts longer still).
    # 0: unknown, ask the database before the next step.
    held_until: float = 0.0
    cancel: asyncio.Event = field(default_factory=asyncio.Event)
    # Set once the pipeline has stopped executing and only its record remains to be committed:
    # the worker may start another run in this slot while the group commit is in flight.
    executed: asyncio.Event = field(default_factory=asyncio.Event)
    on_executed: Callable[[], None] | None = None

    def mark_executed(self) -> None:
        self.executed.set()
        if self.on_executed is not None:
            self.on_executed()


@dataclass
class _Progress:
    """What a run has produced so far: the on_failure steps read it."""

    payload: Payload
    outputs: dict[str, Any]
    saved: dict[str, Any]


def _scrub(value: Any, secret_values: set[str]) -> Any:
    """`value` with the secrets a run used replaced by ***; as is when it used none (the usual case)."""
    return templating.redact(value, secret_values) if secret_values else value


RUNNING_MARK_DELAY = 0.05


class _RunningMark:
    """Writes a step's 'running' row if its call outlasts RUNNING_MARK_DELAY seconds."""

    def __init__(self, write: Callable[[], Awaitable[int]]) -> None:
        self._write = write
        self._writing = False
        self._task = asyncio.ensure_future(self._later())

    async def _later(self) -> int:
        await asyncio.sleep(RUNNING_MARK_DELAY)
        self._writing = True
        return await self._write()

    async def settle(self) -> int | None:
        """The row id if the row was (being) written, else None; never leaves the write half done."""
        if not self._writing:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            return None
        return await self._task


class LeaseLost(Exception):
    """This worker no longer holds the run (its lease expired and another worker took it)."""


class _Interrupted(Exception):
    """The call of a step was stopped because the run was cancelled."""


class StepCancelled(Exception):
    """The run was cancelled while a step was in flight; the step was stopped."""

    def __init__(self, record: StepRecord) -> None:
        super().__init__("cancelled while running")
        self.record = record


DEFAULT_STEP_TIMEOUT = 60.0
"""A step's timeout_seconds when the pipeline gives none (README: Pipelines)."""


class Executor:
    """Runs pipelines for one worker."""

    def __init__(
        self,
        db: asyncpg.Pool,
        tools: ToolCaller,
        *,
        worker: str,
        secrets: Mapping[str, str],
        renderer: Renderer | None = None,
        max_value_bytes: int = templating.MAX_OUTPUT,
        metrics: Metrics | None = None,
        event_limits: EventLimits | None = None,
    ) -> None:
        self._db = db
        self._metrics = metrics or Metrics()
        self._event_limits = event_limits or EventLimits()
        self._tools = tools
        self._worker = worker
        self.renderer = renderer or Renderer(limit=max_value_bytes)
        self._max_value = max_value_bytes
        self._completions = Completions(db, worker)
        self._payloads: dict[tuple[Any, Any], Payload] = {}
        # Only the PAO_SECRET_* variables (Settings.secret_environ): filtering a whole environment per
        # run is measurable at 1k runs/s.
        self._secrets = dict(secrets)
        templating.check_secrets(self._secrets)  # once here, not per run (Secrets(checked=True) below)

    def _payload(self, run: ClaimedRun) -> Payload:
        """The task's parsed payload, parsed once per version of the task (a task's runs share it)."""
        key = (run.task_id, run.task_updated_at)
        payload = self._payloads.get(key)
        if payload is None:
            if len(self._payloads) >= 1024:
                self._payloads.clear()
            payload = self._payloads[key] = Payload.model_validate(run.task_payload)
        return payload

    async def execute(self, handle: RunHandle) -> Outcome:
        """Run the pipeline of a claimed run and record its outcome; return how it ended."""
        run = handle.run
        try:
            return await self._execute(handle)
        except LeaseLost:
            log.warning("run %s: lease lost to another worker; abandoning this copy", run.id)
            return Outcome.LOST

    async def _execute(self, handle: RunHandle) -> Outcome:
        run = handle.run
        payload = self._payload(run)
        pipeline = payload.pipeline
        done: dict[int, step_store.PreviousOutput] = {}
        if run.resume:
            # A retry, or a run taken over from a worker that died: resume after what succeeded.
            async with self._db.acquire() as conn:
                done = await step_store.previous_outputs(conn, run.id)
        secrets = templating.Secrets(self._secrets, checked=True)
        outputs_by_step: dict[str, Any] = {}
        saved: dict[str, Any] = {}
        last_record: StepRecord | None = None
        if run.failing is not None:
            return await self._fail_after_death(handle, payload, done, secrets, run.failing)
        for index, step in enumerate(pipeline):
            if handle.cancel.is_set():
                await self._finish(
                    handle,
                    RunStatus.CANCELLED,
                    None,
                    _scrub(saved, secrets.used_values()),
                    reason="cancelled by cancel_run between steps",
                )
                return Outcome.CANCELLED
            try:
                if index in done:
                    output = self._reuse(step, done[index], secrets)
                else:
                    await self._check_lease(handle)
                    # The last step's record rides along with the run's completion: one write, not two.
                    defer = index == len(pipeline) - 1
                    output, last_record = await self._run_step(
                        handle, index, step, outputs_by_step, saved, secrets, defer=defer
                    )
            except StepError as exc:
                return await self._fail(handle, step, exc, secrets, _Progress(payload, outputs_by_step, saved))
            except StepCancelled as stopped:
                await self._finish(
                    handle,
                    RunStatus.CANCELLED,
                    None,
                    _scrub(saved, secrets.used_values()),
                    # The reason stays the canceller's (cancel_run, cancel_task, cancel_previous).
                    reason=None,
                    step_record=stopped.record,
                )
                return Outcome.CANCELLED
            # Later steps see the output as it is stored: a secret a tool echoed back is *** there too,
            # so no later template can pass it through a filter into something masking would miss.
            output = _scrub(output, secrets.used_values())
            outputs_by_step[step.id] = output
            if step.save_as:
                saved[step.save_as] = output
        await self._finish(
            handle, RunStatus.SUCCEEDED, None, _scrub(saved, secrets.used_values()), step_record=last_record
        )
        return Outcome.SUCCEEDED

    @staticmethod
    def _reuse(step: PipelineStep, previous: step_store.PreviousOutput, secrets: templating.Secrets) -> Any:
        """The output a step recorded in an earlier attempt, with any secret it held put back."""
        if previous.sealed is None:
            return previous.output
        try:
            return templating.unseal(previous.sealed, secrets)
        except StepError as exc:
            raise StepError(
                f"its output from an earlier attempt held a secret that is no longer set ({exc}); "
                "set it again and re-run the task",
                retryable=False,
            ) from None

    async def _check_lease(self, handle: RunHandle) -> None:
        """Raise LeaseLost unless this worker still holds the run: from what it knows when the lease
        surely has a third of its length left, else from the database (renewing it)."""
        if lease_clock() < handle.held_until - handle.lease_seconds / 3:
            return
        asked = lease_clock()
        async with self._db.acquire() as conn:
            cancel = await run_store.renew_lease(conn, handle.run.id, self._worker, handle.lease_seconds)
        if cancel is None:
            raise LeaseLost
        handle.held_until = asked + handle.lease_seconds
        if cancel:
            handle.cancel.set()

    async def _run_step(
        self,
        handle: RunHandle,
        index: int,
        step: PipelineStep,
        outputs_by_step: dict[str, Any],
        saved: dict[str, Any],
        secrets: templating.Secrets,
        *,
        defer: bool,
        run_error: str | None = None,
    ) -> tuple[Any, StepRecord | None]:
        """Run one step; return its output and, when `defer` is set, its record for the caller to write."""
        run = handle.run
        started = datetime.now(UTC)
        t0 = time.perf_counter()
        arguments: Any = None
        row_id: int | None = None
        try:
            arguments = step.with_
            if templating.is_templated(arguments):
                context = templating.build_context(
                    steps=outputs_by_step,
                    saved=saved,
                    trigger=trigger_view(run.trigger, run.scheduled_for, run.trigger_data),
                    task={"id": str(run.task_id), "title": run.task_title},
                    run={"id": str(run.id), "attempt": run.attempt, "error": run_error},
                    secrets=secrets,
                    now=started,
                )
                arguments = await self.renderer.render(arguments, context)
                problem = storable.problem(arguments, self._max_value)
                if problem is not None:
                    raise StepError(f"{step.uses}: the rendered 'with' {problem}", retryable=False)
            if step.server == BUILTIN_SERVER:
                # A built-in's output is made of its arguments, which were checked (at save, or above).
                builtin = BUILTINS.get(step.tool)
                if builtin is not None and not builtin.waits:
                    output = await self._call(step, arguments, run)
                else:
                    output = await self._interruptible(handle, step, self._call(step, arguments, run))
            else:
                # A call still going after RUNNING_MARK_DELAY shows as running in get_run. A quick one
                # never gets that row: its outcome is its only write (or rides on the run's end).
                mark = _RunningMark(lambda: self._start_step(run, index, step, arguments, secrets))
                try:
                    output = await self._interruptible(handle, step, self._call(step, arguments, run))
                finally:
                    row_id = await mark.settle()
                problem = storable.problem(output, self._max_value)
                if problem is not None:
                    # Not retryable: the same call would most likely answer the same way.
                    raise StepError(f"{step.uses} returned an output that {problem}", retryable=False)
                where = templating.secret_in_keys(output, secrets.used_values())
                if where is not None:
                    raise StepError(
                        f"{step.uses} returned an output with a secret's value in an object key (in {where}); "
                        "keys are never masked, so it cannot be stored or passed on",
                        retryable=False,
                    )
        except StepError as exc:
            record = self._step_record(
                run, index, step, StepStatus.FAILED, arguments, None, str(exc), started, t0, secrets
            )
            await self._write_step(run, record, row_id)
            raise
        except _Interrupted:
            # Its record rides on the run's end (an upsert over the 'running' row, if there is one).
            raise StepCancelled(
                self._step_record(
                    run,
                    index,
                    step,
                    StepStatus.CANCELLED,
                    arguments,
                    None,
                    "stopped while running: the run was cancelled",
                    started,
                    t0,
                    secrets,
                )
            ) from None
        record = self._step_record(
            run, index, step, StepStatus.SUCCEEDED, arguments, output, None, started, t0, secrets
        )
        if defer:
            # finish_runs upserts this record over the 'running' row, in the run's completion write.
            return output, record
        await self._write_step(run, record, row_id)
        return output, None

    async def _interruptible(self, handle: RunHandle, step: PipelineStep, call: Awaitable[Any]) -> Any:
        """Await a step's call, stopping it when cancel_run arrives, and (for built-ins, which have no
        pool to enforce it) when its timeout_seconds pass."""
        timeout = None
        if step.server == BUILTIN_SERVER:
            timeout = step.timeout_seconds or DEFAULT_STEP_TIMEOUT
        calling = asyncio.ensure_future(call)
        cancelled = asyncio.ensure_future(handle.cancel.wait())
        try:
            await asyncio.wait({calling, cancelled}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            cancelled.cancel()
            if not calling.done():
                calling.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await calling
        if not calling.cancelled() and calling.done():
            return calling.result()
        if handle.cancel.is_set():
            raise _Interrupted
        raise StepError(f"{step.uses} did not finish within its timeout_seconds ({timeout:g}s)", retryable=True)

    async def _call(self, step: PipelineStep, arguments: Any, run: ClaimedRun) -> Any:
        if not isinstance(arguments, dict):
            raise StepError(
                f"{step.uses}: 'with' must render to an object, got {type(arguments).__name__}",
                retryable=False,
            )
        if step.server == BUILTIN_SERVER:
            builtin = BUILTINS.get(step.tool)
            if builtin is None:
                raise StepError(
                    f"unknown built-in step {step.uses!r}; built-ins are: "
                    + ", ".join(f"pao.{name}" for name in sorted(BUILTINS)),
                    retryable=False,
                )
            if templating.is_templated(step.with_):
                # Literal arguments of a built-in were checked when the task was saved.
                validate_arguments(step.uses, builtin.input_schema, arguments)
            if step.tool == "publish_event":
                return await self._publish(run, step, arguments)
            return await call_builtin(step.tool, arguments)
        validate_arguments(step.uses, await self._tools.tool_schema(step.server, step.tool), arguments)
        result = await self._tools.call_tool(step.server, step.tool, arguments, timeout=step.timeout_seconds)
        if result.is_error:
            # The tool ran and said no. It may be transient (an API behind it is down), so retryable.
            raise StepError(f"{step.uses} returned an error: {result.text}", retryable=True)
        return result.value

    async def _publish(self, run: ClaimedRun, step: PipelineStep, arguments: dict[str, Any]) -> Any:
        """pao.publish_event: one link further down the chain than the event that started this run."""
        started_by = run.trigger_data.get("event")
        depth = (started_by.get("depth", 0) if isinstance(started_by, dict) else 0) + 1
        topic, data = arguments["topic"], arguments.get("data", {})
        # At least once per step: a retry of this step publishes with the same key and finds the first.
        dedupe_key = arguments.get("dedupe_key") or f"run:{run.id}:{step.id}"
        source = f"run:{run.id}"
        try:
            check_event(topic, data, source, dedupe_key, limits=self._event_limits)
        except InvalidArgument as exc:
            raise StepError(f"{step.uses}: {exc}", retryable=False) from None
        async with self._db.acquire() as conn, conn.transaction():
            done = await publish(
                conn,
                NewEvent(topic=topic, data=data, source=source, dedupe_key=dedupe_key, depth=depth),
                limits=self._event_limits,
            )
        return {"event_id": done.event.id, "duplicate": done.duplicate, "runs": len(done.runs)}

    async def _start_step(
        self, run: ClaimedRun, index: int, step: PipelineStep, arguments: Any, secrets: templating.Secrets
    ) -> int:
        async with self._db.acquire() as conn:
            row_id = await step_store.start(
                conn,
                run_id=run.id,
                attempt=run.attempt,
                step_index=index,
                step_id=step.id,
                uses=step.uses,
                input=_scrub(arguments, secrets.used_values()),
                worker=self._worker,
            )
        if row_id is None:
            raise LeaseLost
        return row_id

    def _step_record(
        self,
        run: ClaimedRun,
        index: int,
        step: PipelineStep,
        status: StepStatus,
        arguments: Any,
        output: Any,
        error: str | None,
        started: datetime,
        t0: float,
        secrets: templating.Secrets,
    ) -> StepRecord:
        used = secrets.used_values()
        duration = time.perf_counter() - t0
        if step.server != BUILTIN_SERVER:  # step duration per downstream tool; built-ins cost nothing to watch
            self._metrics.step_finished(step.uses, status.value, duration)
        if status != StepStatus.SUCCEEDED and storable.problem(arguments, self._max_value) is not None:
            # What failed is what cannot be stored (a NUL in the rendered arguments, say): the
            # record leaves it out, its error says what was wrong.
            arguments = None
        return StepRecord(
            attempt=run.attempt,
            step_index=index,
            step_id=step.id,
            uses=step.uses,
            status=status,
            input=_scrub(arguments, used),
            output=_scrub(output, used),
            error=storable.text(_scrub(error, used)),
            started_at=started,
            duration_ms=duration * 1000,
            # Outputs go on masked (see _execute), so there is nothing to seal: a resume reads what
            # the first attempt passed on. Rows sealed by earlier versions are still unsealed.
            output_sealed=None,
        )

    async def _write_step(self, run: ClaimedRun, record: StepRecord, row_id: int | None) -> None:
        async with self._db.acquire() as conn:
            if row_id is not None:
                held = await step_store.finish(conn, row_id, run_id=run.id, record=record, worker=self._worker)
            else:
                held = await step_store.record(conn, run_id=run.id, record=record, worker=self._worker)
        if not held:
            raise LeaseLost

    async def _fail(
        self, handle: RunHandle, step: PipelineStep, exc: StepError, secrets: templating.Secrets, progress: _Progress
    ) -> Outcome:
        run = handle.run
        used = secrets.used_values()
        message = storable.text(_scrub(f"step {step.id!r} ({step.uses}) failed: {exc}", used))
        assert message is not None
        if exc.retryable and run.attempt < run.max_attempts:
            delay = backoff_delay(
                run.backoff_strategy,
                run.attempt,
                base=run.backoff_base_seconds,
                cap=run.backoff_max_seconds,
            )
            reason = f"attempt {run.attempt} failed; retrying in {delay:.1f}s ({run.backoff_strategy})"
            async with self._db.acquire() as conn:
                if not await run_store.retry(
                    conn, run.id, self._worker, error=message, reason=reason, delay_seconds=delay
                ):
                    raise LeaseLost
            self._metrics.retries.inc()
            log.info("%s: %s", reason, message)
            return Outcome.RETRYING
        if exc.retryable:
            reason = f"failed after {run.attempt} attempt(s)"
        else:
            reason = "failed without retry: this error cannot succeed on a retry"
        if progress.payload.on_failure:
            reason += await self._on_failure(handle, message, secrets, progress)
        await self._finish(handle, RunStatus.FAILED, message, None, reason=reason)
        await after_failure(self._db, run.task_id)
        return Outcome.FAILED

    async def _fail_after_death(
        self,
        handle: RunHandle,
        payload: Payload,
        done: dict[int, step_store.PreviousOutput],
        secrets: templating.Secrets,
        error: str,
    ) -> Outcome:
        """The last attempt died with its worker: run only the task's on_failure steps (they see the
        outputs the dead attempts recorded), then fail the run with the error that ended it."""
        progress = _Progress(payload, {}, {})
        for index, step in enumerate(payload.pipeline):
            if index in done:
                try:
                    output = self._reuse(step, done[index], secrets)
                except StepError:
                    continue  # a secret since unset: that output is not offered to on_failure
                progress.outputs[step.id] = output
                if step.save_as:
                    progress.saved[step.save_as] = output
        reason = "failed: its worker stopped on the last attempt" + await self._on_failure(
            handle, error, secrets, progress, done=done
        )
        await self._finish(handle, RunStatus.FAILED, error, None, reason=reason)
        await after_failure(self._db, handle.run.task_id)
        return Outcome.FAILED

    async def _on_failure(
        self,
        handle: RunHandle,
        error: str,
        secrets: templating.Secrets,
        progress: _Progress,
        *,
        done: Mapping[int, step_store.PreviousOutput] | None = None,
    ) -> str:
        """Run the task's on_failure steps, once each, in order, with ${run.error} set; one that fails is
        recorded and the next still runs (`done`: those a dead attempt finished, not run again). Returns
        what to add to the run's reason."""
        steps = progress.payload.on_failure
        first = len(progress.payload.pipeline)
        failed: list[str] = []
        for offset, step in enumerate(steps):
            if done is not None and first + offset in done:
                with contextlib.suppress(StepError):
                    progress.outputs[step.id] = self._reuse(step, done[first + offset], secrets)
                continue
            await self._check_lease(handle)
            try:
                output, _ = await self._run_step(
                    handle,
                    first + offset,
                    step,
                    progress.outputs,
                    progress.saved,
                    secrets,
                    defer=False,
                    run_error=error,
                )
            except StepError:
                failed.append(step.id)
                continue
            except StepCancelled:
                # Cancelled while its on_failure steps ran: the run still ends failed, the rest are not run.
                failed.append(step.id)
                break
            output = _scrub(output, secrets.used_values())
            progress.outputs[step.id] = output
            if step.save_as:
                progress.saved[step.save_as] = output
        if failed:
            return f"; on_failure: {len(failed)} of {len(steps)} step(s) failed ({', '.join(failed)})"
        return f"; on_failure: {len(steps)} step(s) ran"

    async def _finish(
        self,
        handle: RunHandle,
        status: RunStatus,
        error: str | None,
        outputs: dict[str, Any] | None,
        *,
        reason: str | None = None,
        step_record: StepRecord | None = None,
    ) -> None:
        handle.mark_executed()
        run = handle.run
        completion = Completion(
            run_id=run.id,
            status=status,
            error=error,
            outputs=outputs,
            reason=reason,
            step=step_record,
        )
        if not await self._completions.submit(completion):
            raise LeaseLost
        self._metrics.run_finished(status.value, run.trigger.value)
        if status == RunStatus.SUCCEEDED:
            log.debug("run succeeded")
        else:
            log.info("run %s (%s)%s", status, reason, f": {error}" if error else "")
