"""RFC 5545 rule sets on naive wall times: RRULE union plus RDATE, minus EXDATE/EXRULE.

Each dateutil rule is walked through a `Cursor` that caches windows of occurrences.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo

from dateutil import rrule as du_rrule

from pao_orchestrator.engine.schedule.wallclock import ITERATION_CAP, WallRule

_ONE_MICROSECOND: Final = timedelta(microseconds=1)


@dataclass(frozen=True)
class _Window:
    """The first `Cursor.WINDOW` occurrences of a copy of the rule starting at `start`."""

    start: datetime  # the copy's DTSTART: `items` holds every occurrence >= start, in order
    before: int  # occurrences of the original rule before `start` (for COUNT)
    items: tuple[datetime, ...]
    complete: bool  # the rule has no occurrence after items[-1]


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
    """`first occurrence > wall` over one dateutil rrule, in O(log n) once warm.

    dateutil's `after()` iterates from DTSTART on every call (a rule created a year
    ago with FREQ=HOURLY walks 8760 occurrences), and merely starting its generator
    costs tens of microseconds. The cursor caches windows of consecutive occurrences.
    Each next window comes from a copy of the rule re-anchored at the previous window's
    last occurrence (COUNT reduced by the occurrences before it), which generates
    exactly the same sequence from there on. Without COUNT and with a fixed-length
    period (WEEKLY..SECONDLY) the copy jumps straight to a whole number of periods
    after DTSTART, which keeps the phase and every default dateutil derives from
    DTSTART (weekday, time of day), so a far jump costs O(1) windows.
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
        rule = self._origin
        if start != self._dtstart:
            count = None if self._count is None else self._count - before
            rule = rule.replace(dtstart=start, count=count)
        items = tuple(itertools.islice(iter(rule), self.WINDOW))
        return _Window(start, before, items, len(items) < self.WINDOW)

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
        while True:
            items = window.items
            position = bisect.bisect_right(items, wall)
            if position < len(items):
                result: datetime | None = items[position]
                break
            if window.complete:
                result = None
                break
            last = items[-1]
            step = self._step
            if step is not None and wall - last > step * self.WINDOW:
                periods = (wall - self._dtstart) // step - 1
                window = self._fill(self._dtstart + step * periods, 0)
            else:
                window = self._fill(last, window.before + len(items) - 1)
            created.append(window)
            created = created[-self.MAX_WINDOWS :]
        if created:
            merged = {w.start: w for w in (*recent, *created)}
            self._recent = tuple(merged[k] for k in sorted(merged))[-self.MAX_WINDOWS :]
        return result

    def contains(self, wall: datetime) -> bool:
        return self.after(wall - _ONE_MICROSECOND) == wall


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
            for rule in self._rules:
                occurrence = rule.after(cursor)
                if occurrence is not None and (best is None or occurrence < best):
                    best = occurrence
            index = bisect.bisect_right(self._rdates, cursor)
            if index < len(self._rdates) and (best is None or self._rdates[index] < best):
                best = self._rdates[index]
            if best is None:
                return None
            if best in self._exdates or best.date() in self._exdays or any(ex.contains(best) for ex in self._exrules):
                cursor = best
                continue
            return best
        return None
