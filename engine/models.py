"""Domain models: what a task, a pipeline, a run and a step are.

These are the shapes the MCP tools accept and return. They live in the engine
so that it can use them without importing the server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from pao_orchestrator.engine.runtime import Payload, PipelineStep
from pao_orchestrator.vocabulary import (
    BackoffStrategy,
    MisfirePolicy,
    OverlapPolicy,
    RunStatus,
    ScheduleKind,
    StepStatus,
    TaskStatus,
    Trigger,
)

DEFAULT_TIMEZONE = "Europe/Chisinau"


class TaskSpec(BaseModel):
    """The fields of `create_task` (the brief's TaskCreateRequest) plus scheduling policies."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=200)
    description: str = Field(default="", max_length=10_000)
    schedule_kind: ScheduleKind
    schedule_expr: str = Field(min_length=1, max_length=2000)
    timezone: str = DEFAULT_TIMEZONE
    payload: Payload
    # Numbers are strict: "5" and true are refused, not read as 5 and 1 (an agent that sends a string
    # has a bug worth hearing about); a float field takes an integer, and never NaN or Infinity.
    priority: StrictInt = Field(default=5, ge=1, le=9)
    dedupe_key: str | None = Field(default=None, max_length=500)
    dedupe_window_seconds: StrictInt = Field(default=0, ge=0, le=31_536_000)
    max_retries: StrictInt = Field(default=3, ge=0, le=100)
    backoff_strategy: BackoffStrategy = BackoffStrategy.EXPONENTIAL_JITTER
    backoff_base_seconds: StrictFloat = Field(default=2.0, ge=0, le=3600, allow_inf_nan=False)
    backoff_max_seconds: StrictFloat = Field(default=300.0, ge=0, le=86_400, allow_inf_nan=False)
    concurrency_key: str | None = Field(default=None, max_length=500)
    misfire_policy: MisfirePolicy = MisfirePolicy.RUN_ONCE
    misfire_grace_seconds: StrictInt = Field(default=3600, ge=0, le=31_536_000)
    overlap_policy: OverlapPolicy = OverlapPolicy.SKIP
    filter: str | None = Field(
        default=None, max_length=2000, description="event: run only if this ${...} is truthy for the event."
    )
    probe: PipelineStep | None = Field(default=None, description="condition: the step polled every schedule_expr.")
    when: str | None = Field(
        default=None, max_length=2000, description="condition: a ${...} over ${probe}; runs when it turns true."
    )

    @field_validator("schedule_expr")
    @classmethod
    def _strip(cls, value: str) -> str:
        return value.strip()

    @field_validator("probe", mode="before")
    @classmethod
    def _probe_id(cls, value: Any) -> Any:
        # A probe is one step: its id may be left out (it is read as ${probe}, never by id).
        if isinstance(value, dict) and "id" not in value:
            return {"id": "probe", **value}
        return value


class Task(BaseModel):
    """A stored task as tools return it."""

    id: UUID
    title: str
    description: str
    schedule_kind: ScheduleKind
    schedule_expr: str
    timezone: str
    payload: dict[str, Any]
    priority: int
    dedupe_key: str | None
    dedupe_window_seconds: int
    max_retries: int
    backoff_strategy: BackoffStrategy
    backoff_base_seconds: float
    backoff_max_seconds: float
    concurrency_key: str | None
    misfire_policy: MisfirePolicy
    misfire_grace_seconds: int
    overlap_policy: OverlapPolicy
    filter: str | None = None
    probe: dict[str, Any] | None = None
    when: str | None = None
    probe_state: dict[str, Any] | None = Field(
        default=None, description="condition: the latest probe (value, at, error, holds)."
    )
    status: TaskStatus
    next_fire_at: datetime | None
    snoozed_until: datetime | None
    last_fired_at: datetime | None
    created_by: UUID
    created_at: datetime
    updated_at: datetime
    next_fires: list[str] = Field(
        default_factory=list, description="The next few fire instants, ISO 8601 in the task's timezone."
    )
    schedule_error: str | None = Field(
        default=None, description="Why the stored schedule cannot be evaluated (then next_fires is empty)."
    )


class RunStep(BaseModel):
    """One attempt of one step, as recorded."""

    step_index: int
    step_id: str
    uses: str
    attempt: int
    status: StepStatus
    input: Any = None
    output: Any = None
    error: str | None = None
    started_at: datetime
    finished_at: datetime | None = None
    duration_ms: float | None = None


class Run(BaseModel):
    """One execution of a task's pipeline."""

    id: UUID
    task_id: UUID
    status: RunStatus
    trigger: Trigger
    trigger_data: dict[str, Any]
    scheduled_for: datetime
    priority: int
    concurrency_key: str | None
    dedupe_key: str | None
    deduped_of: UUID | None
    attempt: int
    max_attempts: int
    available_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    reason: str | None
    outputs: dict[str, Any] | None
    created_at: datetime
    steps: list[RunStep] = Field(default_factory=list)


class Agent(BaseModel):
    """An identity that calls the tools."""

    id: UUID
    name: str
    scopes: list[str]
    is_owner: bool
    created_at: datetime
    revoked_at: datetime | None = None

    def can(self, scope: str) -> bool:
        return self.is_owner or "admin" in self.scopes or scope in self.scopes
