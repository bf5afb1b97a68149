"""The `run_steps` table: each step of each attempt, as it starts and ends (statements in steps.sql).

Every write a worker makes is fenced on the run's lease (`lease_owner`). The steps of an attempt
that died while running are closed as `abandoned` when its run is re-queued or released.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.store.queries import sql
from pao_orchestrator.store.rows import Record
from pao_orchestrator.vocabulary import StepStatus


@dataclass(frozen=True)
class StepRow(Record):
    """A row of `run_steps`."""

    id: int
    run_id: UUID
    attempt: int
    step_index: int
    step_id: str
    uses: str
    status: StepStatus
    input: Any
    output: Any
    error: str | None
    started_at: datetime
    finished_at: datetime | None
    duration_ms: float | None


@dataclass(frozen=True)
class StepRecord:
    """A finished step, as written to run_steps."""

    attempt: int
    step_index: int
    step_id: str
    uses: str
    status: StepStatus
    input: Any
    output: Any  # as readers see it: secrets shown as ***
    error: str | None
    started_at: datetime
    duration_ms: float
    output_sealed: Any = None  # the output with secrets marked by name, when it held any


@dataclass(frozen=True)
class PreviousOutput:
    """What a step that succeeded in an earlier attempt left for a resume."""

    output: Any
    sealed: Any  # None, or the output with its secrets marked by name (templating.unseal)


@dataclass(frozen=True)
class AbandonedStep:
    """The steps of one dead attempt of a run, to close as abandoned."""

    run_id: UUID
    attempt: int
    reason: str


async def of_run(conn: asyncpg.Connection, run_id: UUID) -> list[StepRow]:
    """Every step of every attempt of a run, in order."""
    return [StepRow.from_row(r) for r in await conn.fetch(sql("get_run_steps"), run_id)]


async def previous_outputs(conn: asyncpg.Connection, run_id: UUID) -> dict[int, PreviousOutput]:
    """step_index -> what every step that already succeeded in some attempt returned."""
    return {
        r["step_index"]: PreviousOutput(r["output"], r["output_sealed"])
        for r in await conn.fetch(sql("previous_step_outputs"), run_id)
    }


async def abandon(conn: asyncpg.Connection, attempts: Sequence[AbandonedStep]) -> None:
    """Close the steps still marked running of these dead attempts, with the reason."""
    if attempts:
        await conn.execute(
            sql("abandon_steps"),
            [a.run_id for a in attempts],
            [a.attempt for a in attempts],
            [a.reason for a in attempts],
        )


async def start(
    conn: asyncpg.Connection,
    *,
    run_id: UUID,
    attempt: int,
    step_index: int,
    step_id: str,
    uses: str,
    input: Any,
    worker: str,
) -> int | None:
    """Record a step as running; None when the worker lost the run's lease."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        sql("start_step"), run_id, attempt, step_index, step_id, uses, input, worker
    )


async def finish(conn: asyncpg.Connection, step_row_id: int, *, run_id: UUID, record: StepRecord, worker: str) -> bool:
    """End a step recorded as running by `start`; False when the worker lost the run's lease."""
    row_id = await conn.fetchval(
        sql("finish_step"),
        step_row_id,
        run_id,
        worker,
        record.status,
        record.output,
        record.error,
        record.duration_ms,
        record.output_sealed,
    )
    return row_id is not None


async def record(conn: asyncpg.Connection, *, run_id: UUID, record: StepRecord, worker: str) -> bool:
    """Record a finished step in one write; False when the worker lost the run's lease."""
    row_id = await conn.fetchval(
        sql("record_step"),
        run_id,
        record.attempt,
        record.step_index,
        record.step_id,
        record.uses,
        record.status,
        record.input,
        record.output,
        record.error,
        record.started_at,
        record.duration_ms,
        worker,
        record.output_sealed,
    )
    return row_id is not None
