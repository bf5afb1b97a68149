"""RFC 5545 rule sets on naive wall times: RRULE union plus RDATE, minus EXDATE/EXRULE.

Each dateutil rule is walked through a `Cursor` that caches windows of occurrences.
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from dateutil import rrule as du_rrule

from pao_orchestrator.engine.schedule.wallclock import HORIZON_YEARS, ITERATION_CAP, BeyondHorizon, WallRule

_ONE_MICROSECOND: Final = timedelta(microseconds=1)

# dateutil walks a rule period by period and compares with UNTIL only when a period yields an
# occurrence, so a rule whose BY... parts never match (FREQ=MINUTELY;INTERVAL=10080;BYDAY=TU from a
# Monday) is walked period by period up to the year 9999: seconds of CPU on the event loop. The walk
# rebuilds its per-month masks (`_iterinfo.rebuild(year, month)`) at least once for every month it
# passes, so refusing to rebuild past a year bounds it. The subclass acts only on rules carrying
# _LAST_YEAR (the copies a Cursor iterates); every other rule iterates exactly as dateutil does.
_LAST_YEAR: Final = "_pao_last_year"
_IterInfo: Any = getattr(du_rrule, "_iterinfo")  # noqa: B009 - a private name of dateutil, on purpose


class _BoundedIterInfo(_IterInfo):  # type: ignore[misc]
    def rebuild(self, year: int, month: int) -> None:
        last = getattr(self.rrule, _LAST_YEAR, None)
        if last is not None and year > last:
            raise BeyondHorizon
        super().rebuild(year, month)


setattr(du_rrule, "_iterinfo", _BoundedIterInfo)  # noqa: B010


@dataclass(frozen=True)
class _Window:
    """Occurrences of a copy of the rule starting at `start`: up to `Cursor.WINDOW`, within the horizon."""

    start: datetime  # the copy's DTSTART: `items` holds every occurrence >= start, in order
    before: int  # occurrences of the original rule before `start` (for COUNT)
    items: tuple[datetime, ...]
    complete: bool  # the rule has no occurrence after items[-1]
    cut: bool  # the walk stopped HORIZON_YEARS after `start`: no occurrence between items[-1] and there


def _window_start(window: _Window) -> datetime:
    return window.start


# Periods of fixed naive length, so DTSTART can be moved by whole periods.
_FIXED_PERIODS: Final = {
    du_rrule.WEEKLY: timedelta(weeks=1),
    du_rrule.DAILY: timedelta(days=1),
    du_rrule.HOURLY: timedelta(hours=1),
    du_rrule.MINUTELY: timedelta(minutes=1),
    du_rrule.SECONDLY: timedelta(seconds=1),
}


class Cursor:
    """`first occurrence > wall` over one dateutil rrule, in O(log n) once warm, bounded by the horizon.

    dateutil's `after()` iterates from DTSTART on every call (a rule created a year
    ago with FREQ=HOURLY walks 8760 occurrences), and merely starting its generator
    costs tens of microseconds. The cursor caches windows of consecutive occurrences.
    Each next window comes from a copy of the rule re-anchored at the previous window's
    last occurrence (COUNT reduced by the occurrences before it), which generates
    exactly the same sequence from there on. Without COUNT and with a fixed-length
    period (WEEKLY..SECONDLY) the copy jumps straight to a whole number of periods
    after DTSTART, which keeps the phase and every default dateutil derives from
    DTSTART (weekday, time of day), so a far jump costs O(1) windows.

    Every window is walked at most HORIZON_YEARS past its start. A rule with no occurrence
    within that span after an occurrence (or after where the search could start) has no
    further occurrence: `after` raises BeyondHorizon.
    """

    WINDOW: Final = 64
    MAX_WINDOWS: Final = 16

    def __init__(self, rule: Any) -> None:
        self._origin = rule
        self._count: int | None = rule._count
        self._dtstart: datetime = rule._dtstart
        period = _FIXED_PERIODS.get(rule._freq)
        self._step: timedelta | None = None
        if period is not None and self._count is None:
            # An absurd INTERVAL overflows timedelta: no jumping then (the walk is short).
            with contextlib.suppress(OverflowError):
                self._step = period * int(rule._interval)
        self._first: _Window | None = None  # from the original rule; built lazily
        self._recent: tuple[_Window, ...] = ()  # sorted by start; replaced atomically

    def _fill(self, start: datetime, before: int) -> _Window:
        count = None if self._count is None else self._count - before
        rule = self._origin.replace(dtstart=start, count=count)
        setattr(rule, _LAST_YEAR, start.year + HORIZON_YEARS)
        items: list[datetime] = []
        cut = False
        try:
            for item in rule:
                items.append(item)
                if len(items) == self.WINDOW:
                    break
        except BeyondHorizon:
            cut = True
        except ValueError:
            # dateutil finds some rules empty only while iterating ("Invalid combination of
            # interval and byhour resulting in empty rule"): nothing after what was found.
            return _Window(start, before, tuple(items), complete=True, cut=False)
        return _Window(start, before, tuple(items), complete=not cut and len(items) < self.WINDOW, cut=cut)

    def after(self, wall: datetime) -> datetime | None:
        recent = self._recent
        index = bisect.bisect_right(recent, wall, key=_window_start) - 1
        if index >= 0:
            window = recent[index]
        else:
            if self._first is None:
                self._first = self._fill(self._dtstart, 0)
            window = self._first
        created: list[_Window] = []
        try:
            while True:
                items = window.items
                position = bisect.bisect_right(items, wall)
                if position < len(items):
                    result: datetime | None = items[position]
                    break
                if window.complete:
                    result = None
                    break
                last = items[-1] if items else None
                step = self._step
                following: _Window | None = None
                if step is not None and (last is None or wall - last > step * self.WINDOW):
                    periods = max((wall - self._dtstart) // step - 1, 0)
                    start = self._dtstart + step * periods
                    if start > window.start:
                        following = self._fill(start, 0)
                if following is None and last is not None and not (window.cut and last == window.start):
                    following = self._fill(last, window.before + len(items) - 1)
                if following is None:
                    # Cut at the horizon with no occurrence after its start: none within HORIZON_YEARS.
                    raise BeyondHorizon
                window = following
                created.append(window)
                created = created[-self.MAX_WINDOWS :]
        finally:
            if created:
                merged = {w.start: w for w in (*recent, *created)}
                self._recent = tuple(merged[k] for k in sorted(merged))[-self.MAX_WINDOWS :]
        return result

    def contains(self, wall: datetime) -> bool:
        try:
            return self.after(wall - _ONE_MICROSECOND) == wall
        except BeyondHorizon:
            return False


class RRuleRule(WallRule):
    """RRULE lines (union), plus RDATEs, minus EXDATEs/EXRULEs, on naive wall times."""

    def __init__(
        self,
        tz: ZoneInfo,
        rules: list[Any],
        exrules: list[Any],
        rdates: Iterable[datetime],
        exdates: Iterable[datetime],
        exdays: Iterable[date],
    ) -> None:
        self.tz = tz
        self._rules = [Cursor(r) for r in rules]
        self._exrules = [Cursor(r) for r in exrules]
        self._rdates = tuple(sorted(set(rdates)))
        self._exdates = frozenset(exdates)
        self._exdays = frozenset(exdays)

    def next_wall(self, wall: datetime) -> datetime | None:
        cursor = wall
        for _ in range(ITERATION_CAP):
            best: datetime | None = None
            beyond = False
            for rule in self._rules:
                try:
                    occurrence = rule.after(cursor)
                except BeyondHorizon:
                    beyond = True
                    continue
                if occurrence is not None and (best is None or occurrence < best):
                    best = occurrence
            index = bisect.bisect_right(self._rdates, cursor)
            if index < len(self._rdates) and (best is None or self._rdates[index] < best):
                best = self._rdates[index]
            if best is None:
                if beyond:
                    raise BeyondHorizon
                return None
            if best in self._exdates or best.date() in self._exdays or any(ex.contains(best) for ex in self._exrules):
                cursor = best
                continue
            return best
        return None
