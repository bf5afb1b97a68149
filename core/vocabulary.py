"""One vocabulary: the statuses, kinds and policies every room speaks.

They are `StrEnum`s: a member is equal to its value (`RunStatus.QUEUED ==
"queued"`), so it goes into SQL parameters and JSON as the plain word the
database CHECKs and operators query.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class TaskStatus(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    COMPLETED = "completed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    SKIPPED = "skipped"


ACTIVE_RUN_STATUSES: Final = frozenset({RunStatus.QUEUED, RunStatus.RUNNING})
TERMINAL_RUN_STATUSES: Final = frozenset(set(RunStatus) - ACTIVE_RUN_STATUSES)


class StepStatus(StrEnum):
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"  # running when its attempt died (worker killed or lease lost); the run went on without it


class ScheduleKind(StrEnum):
    CRON = "cron"
    RRULE = "rrule"
    ONCE = "once"
    EVENT = "event"
    CONDITION = "condition"


TIME_KINDS: Final = frozenset({ScheduleKind.CRON, ScheduleKind.RRULE, ScheduleKind.ONCE})
"""Kinds fired by the clock (the scheduler's); event and condition tasks are fired otherwise."""


class Trigger(StrEnum):
    """What created a run."""

    SCHEDULE = "schedule"
    MANUAL = "manual"
    EVENT = "event"
    CONDITION = "condition"


class BackoffStrategy(StrEnum):
    EXPONENTIAL_JITTER = "exponential_jitter"
    EXPONENTIAL = "exponential"
    LINEAR = "linear"
    FIXED = "fixed"
    NONE = "none"


class MisfirePolicy(StrEnum):
    """What a scheduler that was down does with the fires it missed."""

    SKIP = "skip"
    RUN_ONCE = "run_once"
    CATCH_UP = "catch_up"


class OverlapPolicy(StrEnum):
    """What a fire does while the task's previous run is still queued or running."""

    SKIP = "skip"
    QUEUE = "queue"
    CANCEL_PREVIOUS = "cancel_previous"
    ALLOW = "allow"


class Outcome(StrEnum):
    """How one execution of a claimed run ended, as the worker sees it."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRYING = "retrying"
    CANCELLED = "cancelled"
    LOST = "lost"  # the lease went to another worker; this copy stopped without writing
    CRASHED = "crashed"  # a bug in the executor; the lease expiry re-queues the run


class ChangeKind(StrEnum):
    """What a change announced on the changes channel is about (its payload's prefix)."""

    TASK_CREATED = "task+"
    TASK_CHANGED = "task"
    TASK_DELETED = "task-"
    RUN = "run"
    STEP = "step"


class Scope(StrEnum):
    """What an agent may do (DESIGN.md); `admin` may do everything, and see every agent's objects."""

    TASKS_READ = "tasks:read"
    TASKS_WRITE = "tasks:write"
    RUNS_READ = "runs:read"
    RUNS_WRITE = "runs:write"
    EVENTS_PUBLISH = "events:publish"
    ADMIN = "admin"


class AuditOutcome(StrEnum):
    """How an audited call ended."""

    OK = "ok"
    DENIED = "denied"  # failed authentication or authorization
    ERROR = "error"
