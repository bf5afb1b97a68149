"""Domain models: what a task, a pipeline, a run and a step are.

These are the shapes the MCP tools accept and return. They live in the engine
so that it can use them without importing the server.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, field_validator

from pao_orchestrator.contracts import MAX_DESCRIPTION_CHARS, MAX_TITLE_CHARS
from pao_orchestrator.engine.runtime import Payload, PipelineStep
from pao_orchestrator.vocabulary import (
    AuditOutcome,
    BackoffStrategy,
    MisfirePolicy,
    OverlapPolicy,
    RunStatus,
    ScheduleKind,
    Scope,
    StepStatus,
    TaskStatus,
    Trigger,
)

DEFAULT_TIMEZONE = "Europe/Chisinau"


class TaskSpec(BaseModel):
    """The fields of `create_task` (the brief's TaskCreateRequest) plus scheduling policies."""

    model_config = ConfigDict(extra="forbid")

    title: str = Field(min_length=1, max_length=MAX_TITLE_CHARS, description="Short name.")
    description: str = Field(default="", max_length=MAX_DESCRIPTION_CHARS, description="Free text for people.")
    schedule_kind: ScheduleKind = Field(description="How schedule_expr is read.")
    schedule_expr: str = Field(
        min_length=1,
        max_length=2000,
        description="cron: '30 8 * * 1-5' (6 fields: seconds first); rrule: RFC 5545 "
        "'FREQ=WEEKLY;BYDAY=MO;BYHOUR=8', optional DTSTART line; once: ISO 8601 instant or local "
        "date-time; event: topic pattern; condition: poll interval.",
    )
    timezone: str = Field(default=DEFAULT_TIMEZONE, description="IANA zone the schedule is read in.")
    payload: Payload = Field(description="{pipeline: [step, ...], on_failure?: [step, ...]}, at most 256 KiB of JSON.")
    # Numbers are strict: "5" and true are refused, not read as 5 and 1 (an agent that sends a string
    # has a bug worth hearing about); a float field takes an integer, and never NaN or Infinity.
    priority: StrictInt = Field(default=5, ge=1, le=9, description="1 most urgent.")
    dedupe_key: str | None = Field(
        default=None,
        max_length=500,
        description="Template; a run with a key already active (or in the window) is skipped.",
    )
    dedupe_window_seconds: StrictInt = Field(
        default=0, ge=0, le=31_536_000, description="0: only while queued or running."
    )
    max_retries: StrictInt = Field(default=3, ge=0, le=100, description="Retries of a failed run.")
    backoff_strategy: BackoffStrategy = Field(
        default=BackoffStrategy.EXPONENTIAL_JITTER, description="Delay between retries."
    )
    backoff_base_seconds: StrictFloat = Field(
        default=2.0, ge=0, le=3600, allow_inf_nan=False, description="First delay."
    )
    backoff_max_seconds: StrictFloat = Field(default=300.0, ge=0, le=86_400, allow_inf_nan=False, description="Cap.")
    concurrency_key: str | None = Field(
        default=None, max_length=500, description="Template; runs with equal keys never overlap."
    )
    misfire_policy: MisfirePolicy = Field(default=MisfirePolicy.RUN_ONCE, description="Fires missed while down.")
    misfire_grace_seconds: StrictInt = Field(
        default=3600, ge=0, le=31_536_000, description="run_once runs a missed fire this recent."
    )
    overlap_policy: OverlapPolicy = Field(
        default=OverlapPolicy.SKIP, description="A fire while the previous run is active."
    )
    pause_after_failures: StrictInt | None = Field(
        default=None, ge=1, le=1000, description="Pause after this many failed runs in a row."
    )
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
    pause_after_failures: int | None = Field(
        default=None, description="Pause the task after this many consecutive failed runs (null: never)."
    )
    filter: str | None = None
    probe: dict[str, Any] | None = None
    when: str | None = None
    probe_state: dict[str, Any] | None = Field(
        default=None, description="condition: the latest probe (value, at, error, holds)."
    )
    status: TaskStatus
    paused_reason: str | None = Field(default=None, description="Why the task is paused (null unless paused).")
    paused_at: datetime | None = Field(default=None, description="Since when the task is paused.")
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


class RunSummary(BaseModel):
    """One execution of a task's pipeline, without its steps (a row of list_runs)."""

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


class Run(RunSummary):
    """One execution of a task's pipeline, with every step of every attempt."""

    steps: list[RunStep] = Field(default_factory=list)


class Agent(BaseModel):
    """An identity that calls the tools, as the engine sees the caller of one request."""

    id: UUID
    name: str
    scopes: list[str]
    is_owner: bool
    created_at: datetime
    revoked_at: datetime | None = None
    # The MCP request this caller is making (for the audit log); set by the server per call.
    request_id: str | None = Field(default=None, exclude=True)

    @property
    def is_admin(self) -> bool:
        return self.is_owner or Scope.ADMIN in self.scopes

    def can(self, scope: str) -> bool:
        return self.is_admin or scope in self.scopes

    def sees(self, owner: UUID | None) -> bool:
        """Whether this caller may see an object created by `owner` (its own, or any as admin)."""
        return self.is_admin or owner == self.id


class TokenInfo(BaseModel):
    """One of an agent's tokens, as admins see it: never the token itself."""

    id: UUID = Field(description="The token's id (pao agents revoke ID, or update_agent revoke_token_id).")
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    active: bool


class AgentInfo(BaseModel):
    """An agent as the admin tools return it."""

    id: UUID
    name: str
    description: str
    scopes: list[Scope]
    is_owner: bool
    created_at: datetime
    updated_at: datetime
    revoked_at: datetime | None
    deleted_at: datetime | None
    tokens: list[TokenInfo] = Field(default_factory=list)
    paused_tasks: list[UUID] | None = Field(
        default=None, description="delete_agent only: the agent's tasks it paused (resume_task keeps one going)"
    )


class AuditEntry(BaseModel):
    """One audit_log row: who did what to which target, when, in which request, and how it ended."""

    id: int
    agent_id: UUID | None
    agent_name: str | None
    action: str
    target_type: str
    target_id: str | None
    details: dict[str, Any]
    request_id: str | None
    outcome: AuditOutcome
    created_at: datetime
