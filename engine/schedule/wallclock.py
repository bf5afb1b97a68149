"""Naive wall-clock time in a zone mapped to UTC instants, and the DST gap/fold rule.

Cron and rrule are iterated on NAIVE wall-clock times; `WallRule` turns those into a strictly
increasing sequence of UTC fires (see the wall-clock rule in `engine.schedules`).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from pao_orchestrator.engine.schedule.rules import Rule

# A pathological expression must not loop forever: after this many candidate wall
# times without a fire, the schedule is treated as having no further fire.
ITERATION_CAP: Final = 10_000

# How far ahead a search for the next fire looks. A cron or rrule with no fire within this
# many years of the instant searched from has no further fire, as far as pao is concerned: a
# rule that never matches (FREQ=MINUTELY;INTERVAL=10080;BYDAY=TU from a Monday) is refused when
# it is saved or previewed instead of being searched up to the year 9999, and a search costs at
# most this many years of the rule's periods (milliseconds), never seconds of the event loop.
# 29 February has gaps of up to 8 years (2096 -> 2104), so it fits.
HORIZON_YEARS: Final = 10


class BeyondHorizon(Exception):
    """A search for the next fire gave up at the horizon (HORIZON_YEARS) without finding one."""


# How far back to look for a DST gap that could make a wall time before `after`'s own
# wall time fire after `after` (covers every real-world offset jump, including a
# skipped day).
_GAP_LOOKBACK: Final = timedelta(days=2)

# Longest length of each month (index 1..12; February in a leap year).
MAX_MONTH_DAYS: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def wall_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a wall time in a gap uses the pre-transition offset (lands after the gap
    # at the same distance), an ambiguous wall time is its first occurrence.
    return wall.replace(tzinfo=tz).astimezone(UTC)


def start_wall(after: datetime, tz: ZoneInfo) -> datetime:
    """The wall time from which to search (exclusive) for fires strictly after `after`.

    Normally `after`'s own wall time. Right after a spring-forward gap, wall times inside
    the gap (which precede `after`'s wall time) map to instants just after the
    transition, possibly later than `after`; then start from `after` read with the
    pre-gap offset.
    """
    local = after.astimezone(tz)
    offset = local.utcoffset()
    wall = local.replace(tzinfo=None)
    before = tz.utcoffset(wall - _GAP_LOOKBACK)
    assert offset is not None and before is not None
    if before < offset:  # rare: an offset increase within the lookback window
        gap = offset - before
        recent = (after - gap).astimezone(tz).utcoffset()
        assert recent is not None
        if recent < offset:
            return wall - gap
    return wall


class WallRule(Rule):
    """A rule iterated on naive wall-clock times in `tz` (cron, rrule)."""

    tz: ZoneInfo

    def next_wall(self, wall: datetime) -> datetime | None:
        """The first matching naive wall time strictly after `wall`; None when the rule is exhausted.

        Raises BeyondHorizon when there is none within HORIZON_YEARS of `wall`.
        """
        raise NotImplementedError

    def next_after(self, after: datetime) -> datetime | None:
        tz = self.tz
        wall: datetime | None = start_wall(after, tz)
        for _ in range(ITERATION_CAP):
            assert wall is not None
            wall = self.next_wall(wall)
            if wall is None:
                return None
            instant = wall_to_utc(wall, tz)
            if instant <= after:
                continue
            local = instant.astimezone(tz)
            real_wall = local.replace(tzinfo=None)
            if real_wall != wall:
                # `wall` lies in a DST gap and was shifted forward; a real wall time
                # just after the gap may map to an earlier instant that is still after
                # `after`. Post-gap wall times map in increasing order: take the first.
                # Only wall times later than `after` read with the post-gap offset can.
                offset = local.utcoffset()
                assert offset is not None
                probe: datetime | None = max(wall, after.astimezone(UTC).replace(tzinfo=None) + offset)
                for _ in range(ITERATION_CAP):
                    assert probe is not None
                    try:
                        probe = self.next_wall(probe)
                    except BeyondHorizon:
                        break
                    if probe is None or probe >= real_wall:
                        break
                    candidate = wall_to_utc(probe, tz)
                    if after < candidate < instant:
                        return candidate
            return instant
        return None
