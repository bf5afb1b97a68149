"""Pure schedule math: parse and validate schedule expressions, compute fire instants.

No I/O and no database. Five kinds of schedule exist:

* ``cron``: 5 fields (minute hour day-of-month month day-of-week), 6 fields with the
  SECONDS FIRST (second minute hour day-of-month month day-of-week), or an alias such as
  ``@daily``.
* ``rrule``: RFC 5545 recurrence (``RRULE``/``RDATE``/``EXDATE``/``EXRULE`` lines with an
  optional ``DTSTART``, or a bare ``FREQ=...`` rule).
* ``once``: one ISO 8601 instant.
* ``event``: a topic pattern; fires are driven by published events, never by the clock.
* ``condition``: a poll interval; the condition itself is evaluated elsewhere.

Wall-clock rule. Cron and rrule are iterated on NAIVE wall-clock times in the schedule's
zone; each wall time is mapped to UTC by attaching the zone with ``fold=0``. So a wall
time that does not exist (spring forward) fires at the same offset after the gap (02:30
in a 02:00->03:00 gap fires at 03:30), and a wall time that occurs twice (fall back)
fires once, at its first occurrence. Each UTC instant fires at most once and the
sequence of fires is strictly increasing.

All instants returned are tz-aware UTC.

This module is the schedule room's main API (re-exported by its door). The math lives in
one module per concept; each imports only modules listed before it: ``errors``,
``timezones``, ``rules`` (once/event/condition), ``wallclock`` (DST rule), ``cron``,
``rrule_sets``, ``rrules``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from pao_orchestrator.engine.schedule.cron import CronRule
from pao_orchestrator.engine.schedule.errors import invalid, quote, require_aware
from pao_orchestrator.engine.schedule.rrules import parse_rrule
from pao_orchestrator.engine.schedule.rules import (
    LATEST,
    IntervalRule,
    OnceRule,
    Rule,
    parse_condition,
    parse_event,
    parse_once,
)
from pao_orchestrator.engine.schedule.timezones import format_local, load_timezone
from pao_orchestrator.engine.schedule.wallclock import HORIZON_YEARS, BeyondHorizon
from pao_orchestrator.errors import InvalidArgument
from pao_orchestrator.vocabulary import TIME_KINDS, ScheduleKind

MAX_PREVIEW: Final = 100
MAX_EXPR_LEN: Final = 4096
# How long a preview may search (a rule whose fires are years apart costs milliseconds a fire).
PREVIEW_BUDGET_SECONDS: Final = 0.5
_BEYOND: Final[Any] = object()


@dataclass(frozen=True, eq=False)
class Schedule:
    """A parsed, validated schedule. Shared between tasks through the parse cache, so it
    is immutable apart from private memo/checkpoint caches."""

    kind: ScheduleKind
    expr: str
    tz: ZoneInfo
    _rule: Rule = field(repr=False)
    # One slot holding the last (after, next) pair: thousands of tasks share a schedule
    # and ask for the same `after`. Replaced whole, so concurrent readers see a pair.
    _memo: list[tuple[datetime, Any] | None] = field(default_factory=lambda: [None], repr=False)

    @property
    def is_time_based(self) -> bool:
        return self.kind in TIME_KINDS

    @property
    def interval(self) -> timedelta | None:
        """The poll interval of a `condition` schedule, else None."""
        return self._rule.interval if isinstance(self._rule, IntervalRule) else None

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire strictly after `after` (tz-aware UTC); None when there is none.

        None also when there is no fire within HORIZON_YEARS of `after`: the schedule has ended.
        """
        try:
            return self.search(after)
        except BeyondHorizon:
            return None

    def search(self, after: datetime) -> datetime | None:
        """`next_after`, raising BeyondHorizon when the search gave up at the horizon rather than
        finding the schedule exhausted (so a caller can say which)."""
        require_aware(after, "after")
        last = self._memo[0]
        if last is not None and last[0] == after:
            if last[1] is _BEYOND:
                raise BeyondHorizon
            memo: datetime | None = last[1]
            return memo
        try:
            result: datetime | None = self._rule.next_after(after)
        except OverflowError:  # near datetime.max
            result = None
        except BeyondHorizon:
            self._memo[0] = (after, _BEYOND)
            raise
        if result is not None and result >= LATEST:
            result = None  # Postgres and asyncpg read datetime.max as 'infinity'; nothing is scheduled there
        self._memo[0] = (after, result)
        return result

    def upcoming(self, after: datetime, count: int, *, budget: float | None = None) -> list[datetime]:
        """Up to `count` successive fires strictly after `after` (fewer when exhausted).

        With `budget` (seconds), stop listing once the searches have taken that long.
        """
        fires: list[datetime] = []
        cursor = after
        deadline = None if budget is None else time.monotonic() + budget
        for _ in range(max(count, 0)):
            fire = self.next_after(cursor)
            if fire is None:
                break
            fires.append(fire)
            cursor = fire
            if deadline is not None and time.monotonic() > deadline:
                break
        return fires


def _check_kind(kind: str) -> ScheduleKind:
    try:
        return ScheduleKind(kind)
    except ValueError:
        known = ", ".join(ScheduleKind)
        raise InvalidArgument("schedule_kind", f"unknown schedule kind {kind!r}; use one of {known}") from None


def parse_schedule(kind: str, expr: str, timezone: str, *, anchor: datetime) -> Schedule:
    """Parse and syntax-check a schedule (cached); raise InvalidArgument on bad input.

    `anchor` (tz-aware) is the task's creation instant (microseconds dropped): an rrule
    without DTSTART starts at midnight of the anchor's day in the task zone, so the fields
    it does not give are 0, and its COUNT counts the occurrences strictly after the anchor
    ("COUNT=3" fires three times, however much of that day has passed).
    """
    require_aware(anchor, "anchor")
    checked = _check_kind(kind)
    if not isinstance(expr, str):
        raise invalid(f"schedule_expr must be a string, got {type(expr).__name__}")
    if len(expr) > MAX_EXPR_LEN:
        raise invalid(f"schedule_expr {quote(expr, 60)} is {len(expr)} characters long; at most {MAX_EXPR_LEN}")
    key_anchor: datetime | None = None
    if checked == ScheduleKind.RRULE and "DTSTART" not in expr.upper():
        key_anchor = anchor.astimezone(UTC).replace(microsecond=0)
    return _parse_cached(checked, expr, timezone, key_anchor)


@functools.lru_cache(maxsize=4096)
def _parse_cached(kind: ScheduleKind, expr: str, timezone: str, anchor: datetime | None) -> Schedule:
    tz = load_timezone(timezone)
    builders: dict[ScheduleKind, Callable[[], Rule]] = {
        ScheduleKind.CRON: lambda: CronRule(expr, tz),
        ScheduleKind.RRULE: lambda: parse_rrule(expr, tz, anchor),
        ScheduleKind.ONCE: lambda: parse_once(expr, tz),
        ScheduleKind.EVENT: lambda: parse_event(expr),
        ScheduleKind.CONDITION: lambda: parse_condition(expr),
    }
    return Schedule(kind, expr, tz, builders[kind]())


def validate_schedule(kind: str, expr: str, timezone: str, *, now: datetime, anchor: datetime) -> Schedule:
    """parse_schedule, plus: a time-based schedule must fire at least once strictly after `now`."""
    require_aware(now, "now")
    schedule = parse_schedule(kind, expr, timezone, anchor=anchor)
    if schedule.kind not in TIME_KINDS:
        return schedule
    now_local = format_local(now, schedule.tz)
    try:
        if schedule.search(now) is not None:
            return schedule
    except BeyondHorizon:
        raise invalid(_beyond_message(schedule, now_local)) from None
    if isinstance(schedule._rule, OnceRule):
        when = format_local(schedule._rule.instant, schedule.tz)
        raise invalid(
            f"once {quote(expr)} is in the past (it is {when}; now is {now_local} in {schedule.tz.key}); "
            "give a future instant"
        )
    if schedule.kind == ScheduleKind.CRON:
        reason = "no date matches its day-of-month/month/day-of-week fields"
    else:
        reason = "its COUNT/UNTIL is already exhausted or no date matches all of its parts"
    raise invalid(f"{schedule.kind} {quote(expr)} never fires after now ({now_local}): {reason}")


def preview(
    kind: str,
    expr: str,
    timezone: str,
    *,
    count: int,
    after: datetime | None,
    now: datetime,
    anchor: datetime | None = None,
) -> list[datetime]:
    """The next `count` (1..100) fires strictly after `after` (default: now), UTC-aware.

    Syntax errors raise InvalidArgument; a schedule with no fire left returns []."""
    require_aware(now, "now")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PREVIEW:
        raise InvalidArgument("count", f"count {count!r} must be an integer from 1 to {MAX_PREVIEW}")
    if after is None:
        after = now
    elif not isinstance(after, datetime) or after.tzinfo is None or after.utcoffset() is None:
        raise InvalidArgument(
            "after",
            f"after {quote(str(after))} has no UTC offset; give an ISO 8601 instant with offset, "
            "e.g. '2026-03-29T08:00:00+03:00' or '2026-03-29T05:00:00Z'",
        )
    schedule = parse_schedule(kind, expr, timezone, anchor=anchor if anchor is not None else now)
    try:
        first = schedule.search(after)
    except BeyondHorizon:
        raise invalid(_beyond_message(schedule, format_local(after, schedule.tz))) from None
    if first is None:
        return []
    return [first, *schedule.upcoming(first, count - 1, budget=PREVIEW_BUDGET_SECONDS)]


def _beyond_message(schedule: Schedule, start: str) -> str:
    return (
        f"{schedule.kind} {quote(schedule.expr)} has no fire within {HORIZON_YEARS} years after {start}; "
        f"pao looks {HORIZON_YEARS} years ahead and no further. Check that its parts can all match at once "
        "(an INTERVAL of whole weeks keeps the weekday of DTSTART, so BYDAY must include it)"
    )
