"""Which fires of a schedule become runs: snooze and misfire policy, decided without I/O.

The scheduler hands this module a task's schedule, its stored next fire, and the
current instant; it gets back the fires to run, the fires to record as skipped
(each with the reason an agent can repeat to its user), and the new next fire.
Overlap (is a previous run still active?) depends on the task's runs and is
decided by the scheduler afterwards.

Missed fires are fires more than ON_TIME before now: the scheduler was not
running (or not keeping up) when they came. A scheduler that is merely a little
late still runs every fire; a process that was down meets the misfire policy.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from pao_orchestrator.engine.schedule import Schedule
from pao_orchestrator.vocabulary import MisfirePolicy

# A fire this much older than now was missed rather than merely handled late.
ON_TIME: Final = timedelta(seconds=5)
# misfire_policy=catch_up replays at most this many missed fires (the newest); older ones are
# recorded as one skipped row. Bounds the storm after a long outage.
CATCH_UP_CAP: Final = 100
# Missed fires are counted one by one up to this many; beyond it the reason says "more than".
COUNT_LIMIT: Final = 10_000

_TICK: Final = timedelta(microseconds=1)


def when(instant: datetime, tz: ZoneInfo) -> str:
    """An instant as the task's user reads it: '2026-03-29 08:30:00 EEST'."""
    return instant.astimezone(tz).strftime("%Y-%m-%d %H:%M:%S %Z")


@dataclass(frozen=True)
class Plan:
    """What the schedule and the misfire policy say about one task's due fires."""

    runs: tuple[tuple[datetime, bool], ...]  # (instant, is a catch-up of a missed fire), oldest first
    skipped: tuple[tuple[datetime, str], ...]  # (instant, reason)
    next_fire_at: datetime | None  # None: the schedule is exhausted, the task completes
    snooze_over: bool  # a snooze ended before the fires handled here


@dataclass
class Missed:
    """Fires that passed without a run, counted."""

    count: int
    truncated: bool  # more than COUNT_LIMIT: `count` is a lower bound
    first: datetime
    newest: list[datetime]  # the newest few missed fires, oldest first


def _newest_before(schedule: Schedule, end: datetime, keep: int, floor: datetime) -> list[datetime]:
    """The newest `keep` fires in (floor, end), found without walking from `floor`.

    Used only after an outage longer than COUNT_LIMIT fires: widen a window back from `end` until
    it holds `keep` fires.
    """
    width = timedelta(seconds=1)
    while True:
        low = max(end - width, floor)
        got: deque[datetime] = deque(maxlen=keep)
        fire = schedule.next_after(low)
        for _ in range(COUNT_LIMIT):
            if fire is None or fire >= end:
                break
            got.append(fire)
            fire = schedule.next_after(fire)
        if len(got) >= keep or low == floor:
            return list(got)
        width *= 4


def _walk(schedule: Schedule, first: datetime, cutoff: datetime, keep: int) -> tuple[Missed | None, datetime | None]:
    """Missed fires from `first` (itself a fire) up to `cutoff`; and the first fire at or after it."""
    if first >= cutoff:
        return None, first
    newest: deque[datetime] = deque(maxlen=keep)
    fire: datetime | None = first
    count = 0
    while fire is not None and fire < cutoff and count < COUNT_LIMIT:
        newest.append(fire)
        count += 1
        fire = schedule.next_after(fire)
    truncated = fire is not None and fire < cutoff
    if truncated:
        recent = _newest_before(schedule, cutoff, keep, newest[-1])
        newest = deque(recent or newest, maxlen=keep)
        fire = schedule.next_after(cutoff - _TICK)
    return Missed(count, truncated, first, list(newest)), fire


def between(schedule: Schedule, first: datetime, end: datetime) -> Missed | None:
    """The fires from `first` (itself a fire) up to `end`, counted (None when there is none)."""
    return _walk(schedule, first, end, 1)[0]


def span(missed: Missed, count: int, last: datetime, tz: ZoneInfo) -> str:
    """'the fire at X' or 'N fires from X to Y' for `count` missed fires ending at `last`."""
    if count == 1:
        return f"the fire at {when(last, tz)}"
    number = f"more than {COUNT_LIMIT:,}" if missed.truncated else f"{count:,}"
    return f"{number} fires from {when(missed.first, tz)} to {when(last, tz)}"


def plan(
    schedule: Schedule,
    *,
    next_fire_at: datetime,
    snoozed_until: datetime | None,
    misfire_policy: MisfirePolicy,
    grace_seconds: int,
    now: datetime,
    horizon: datetime,
) -> Plan:
    """Decide the fires from `next_fire_at` up to `horizon` (>= now: runs may be created ahead)."""
    tz = schedule.tz
    skipped: list[tuple[datetime, str]] = []
    fire: datetime | None = next_fire_at
    snooze_over = False
    if snoozed_until is not None:
        if next_fire_at < snoozed_until:
            # One row for the first suppressed fire; the scheduler then sleeps through the snooze
            # instead of waking for every fire in it.
            skipped.append((next_fire_at, f"snoozed until {when(snoozed_until, tz)}: no fire before then"))
            fire = schedule.next_after(snoozed_until - _TICK)
            if fire is None or fire > horizon:
                return Plan((), tuple(skipped), fire, snooze_over=fire is None)
        snooze_over = True
    assert fire is not None
    keep = {MisfirePolicy.SKIP: 1, MisfirePolicy.RUN_ONCE: 2}.get(misfire_policy, CATCH_UP_CAP + 1)
    missed, fire = _walk(schedule, fire, now - ON_TIME, keep)
    timely: list[datetime] = []
    while fire is not None and fire <= horizon:
        timely.append(fire)
        fire = schedule.next_after(fire)
    runs = [(instant, False) for instant in timely]
    if missed is not None:
        newest = missed.newest[-1]
        if misfire_policy == MisfirePolicy.SKIP:
            reason = f"missed {span(missed, missed.count, newest, tz)}: no scheduler was running (misfire_policy=skip)"
            skipped.append((newest, reason))
        elif misfire_policy == MisfirePolicy.RUN_ONCE:
            skipped.extend(_run_once(missed, timely, runs, now, grace_seconds, tz))
        else:
            replay = missed.newest[-CATCH_UP_CAP:]
            runs[:0] = [(instant, True) for instant in replay]
            older = missed.count - len(replay)
            if older > 0:
                last = missed.newest[0]
                skipped.append(
                    (
                        last,
                        f"missed {span(missed, older, last, tz)}: catch_up replays at most the newest "
                        f"{CATCH_UP_CAP} missed fires (misfire_policy=catch_up)",
                    )
                )
    return Plan(tuple(runs), tuple(skipped), fire, snooze_over)


def _run_once(
    missed: Missed,
    timely: list[datetime],
    runs: list[tuple[datetime, bool]],
    now: datetime,
    grace_seconds: int,
    tz: ZoneInfo,
) -> list[tuple[datetime, str]]:
    """misfire_policy=run_once: the missed fires collapse into one run (a fire due now, else the newest
    missed one if it is within the grace period); returns the skipped rows that record it."""
    newest = missed.newest[-1]
    if timely:
        target = timely[0]
        coalesced, last = missed.count, newest
    elif (now - newest).total_seconds() <= grace_seconds:
        runs.insert(0, (newest, True))
        if missed.count == 1:
            return []
        target, coalesced, last = newest, missed.count - 1, missed.newest[-2]
    else:
        return [
            (
                newest,
                f"missed {span(missed, missed.count, newest, tz)}: the newest is older than "
                f"misfire_grace_seconds={grace_seconds} (misfire_policy=run_once)",
            )
        ]
    return [
        (
            last,
            f"missed {span(missed, coalesced, last, tz)}: coalesced into the run for {when(target, tz)} "
            "(misfire_policy=run_once)",
        )
    ]
