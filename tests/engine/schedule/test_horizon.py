"""Schedule searches are bounded: a rule with no fire within HORIZON_YEARS is refused, fast.

Before the bound, dateutil walked such a rule period by period up to the year 9999: seconds of
CPU per search, on the event loop, for a read-only preview.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest

from pao_orchestrator.engine.schedule import parse_schedule, preview, validate_schedule
from pao_orchestrator.errors import InvalidArgument

MONDAY = datetime(2026, 3, 2, tzinfo=UTC)

NEVER = [
    "FREQ=MINUTELY;INTERVAL=10080;BYDAY=TU",  # a week apart, always on Monday
    "FREQ=HOURLY;INTERVAL=168;BYDAY=TU",
    "FREQ=SECONDLY;INTERVAL=604800;BYDAY=TU",
    "FREQ=DAILY;INTERVAL=7;BYDAY=TU",
    "FREQ=DAILY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",  # next in 2044
    "FREQ=SECONDLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO",
    "FREQ=MONTHLY;INTERVAL=2;BYMONTH=2",  # odd months only, from March
    "FREQ=YEARLY;INTERVAL=4;BYMONTH=2;BYMONTHDAY=29",  # every fourth year from 2026: never a leap year
]


@pytest.mark.parametrize("expr", NEVER)
def test_a_rule_with_no_fire_within_the_horizon_is_refused_at_save_and_at_preview_in_milliseconds(expr: str) -> None:
    started = time.perf_counter()
    with pytest.raises(InvalidArgument, match="has no fire within 10 years after") as saved:
        validate_schedule("rrule", expr, "UTC", now=MONDAY, anchor=MONDAY)
    with pytest.raises(InvalidArgument, match="has no fire within 10 years after"):
        preview("rrule", expr, "UTC", count=5, after=MONDAY, now=MONDAY, anchor=MONDAY)
    assert time.perf_counter() - started < 1.0
    assert saved.value.field == "schedule_expr"


def test_a_rule_with_fires_years_apart_lists_them_and_ends_after_a_gap_longer_than_the_horizon() -> None:
    # Every 29 February: gaps of 4 years (8 around 2100) are within the horizon.
    leap = preview("rrule", "FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29", "UTC", count=30, after=MONDAY, now=MONDAY)
    assert [i.year for i in leap[:3]] == [2028, 2032, 2036] and len(leap) == 30
    # 29 February on a Monday: 2044, then 2072. A gap longer than the horizon ends the schedule.
    schedule = parse_schedule(
        "rrule", "DTSTART:20430101T000000Z\nRRULE:FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=29;BYDAY=MO", "UTC", anchor=MONDAY
    )
    assert schedule.upcoming(datetime(2043, 1, 1, tzinfo=UTC), 3) == [datetime(2044, 2, 29, tzinfo=UTC)]


def test_a_cron_whose_next_fire_is_beyond_the_horizon_has_ended() -> None:
    schedule = parse_schedule("cron", "0 0 L 2 5#5", "UTC", anchor=MONDAY)  # a fifth Friday in February
    fires = schedule.upcoming(MONDAY, 3)
    assert fires == [datetime(2036, 2, 29, tzinfo=UTC)]
    assert schedule.next_after(fires[0]) is None


def test_a_once_instant_past_the_latest_schedulable_one_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="too far in the future; the latest instant pao schedules is 9998-12-31"):
        validate_schedule("once", "9999-12-31T23:59:59.999999Z", "UTC", now=MONDAY, anchor=MONDAY)
    with pytest.raises(InvalidArgument, match="too far in the future"):
        validate_schedule("once", "9999-06-01T00:00:00", "Pacific/Kiritimati", now=MONDAY, anchor=MONDAY)
    assert validate_schedule("once", "9998-12-31T00:00:00Z", "UTC", now=MONDAY, anchor=MONDAY).next_after(MONDAY)
