"""Schedule math: exact fire instants (DST included) and the error messages an LLM reads."""

from __future__ import annotations

import bisect
import itertools
import random
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from croniter import croniter
from dateutil.rrule import rrulestr

from pao_orchestrator.engine.schedule import (
    Schedule,
    format_local,
    load_timezone,
    parse_schedule,
    preview,
    validate_schedule,
)
from pao_orchestrator.engine.schedule.cron import CronRule
from pao_orchestrator.engine.schedule.rrule_sets import Cursor
from pao_orchestrator.errors import InvalidArgument
from pao_orchestrator.vocabulary import TIME_KINDS

NOW = datetime(2026, 3, 1, tzinfo=UTC)
CHISINAU = "Europe/Chisinau"
NEW_YORK = "America/New_York"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def fires(kind: str, expr: str, tz: str, after: datetime, count: int, anchor: datetime = NOW) -> list[str]:
    schedule = parse_schedule(kind, expr, tz, anchor=anchor)
    return [d.isoformat() for d in schedule.upcoming(after, count)]


def local_fires_from(expr: str, tz: str, anchor: datetime, count: int) -> list[str]:
    """The next `count` fires of an rrule created at `anchor`, as local ISO 8601."""
    schedule = parse_schedule("rrule", expr, tz, anchor=anchor)
    return [format_local(d, schedule.tz) for d in schedule.upcoming(anchor, count)]


def local_fires(kind: str, expr: str, tz: str, after: datetime, count: int) -> list[str]:
    schedule = parse_schedule(kind, expr, tz, anchor=NOW)
    return [format_local(d, schedule.tz) for d in schedule.upcoming(after, count)]


def error(kind: str, expr: str, tz: str = CHISINAU) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        parse_schedule(kind, expr, tz, anchor=NOW)
    return info.value


def assert_strictly_increasing(instants: list[datetime]) -> None:
    assert all(a < b for a, b in itertools.pairwise(instants)), instants
    assert len(set(instants)) == len(instants)


# ------------------------------------------------------------------ the zones' transitions


def test_dst_transitions_used_by_these_tests() -> None:
    """Pin the tzdata facts the expected values rely on (Moldova switches at 02:00/03:00
    local, not at the EU's 03:00/04:00 Chisinau wall time)."""
    tz = ZoneInfo(CHISINAU)
    assert utc(2026, 3, 28, 23, 59).astimezone(tz).isoformat() == "2026-03-29T01:59:00+02:00"
    assert utc(2026, 3, 29, 0, 0).astimezone(tz).isoformat() == "2026-03-29T03:00:00+03:00"
    assert utc(2026, 10, 24, 23, 59).astimezone(tz).isoformat() == "2026-10-25T02:59:00+03:00"
    assert utc(2026, 10, 25, 0, 0).astimezone(tz).isoformat() == "2026-10-25T02:00:00+02:00"
    ny = ZoneInfo(NEW_YORK)
    assert utc(2026, 3, 8, 6, 59).astimezone(ny).isoformat() == "2026-03-08T01:59:00-05:00"
    assert utc(2026, 3, 8, 7, 0).astimezone(ny).isoformat() == "2026-03-08T03:00:00-04:00"
    assert utc(2026, 11, 1, 5, 59).astimezone(ny).isoformat() == "2026-11-01T01:59:00-04:00"
    assert utc(2026, 11, 1, 6, 0).astimezone(ny).isoformat() == "2026-11-01T01:00:00-05:00"


# ------------------------------------------------------------------------- cron and DST


def test_chisinau_spring_forward_daily_in_gap_fires_after_gap_same_offset() -> None:
    after = utc(2026, 3, 27)
    assert fires("cron", "30 2 * * *", CHISINAU, after, 4) == [
        "2026-03-27T00:30:00+00:00",
        "2026-03-28T00:30:00+00:00",
        "2026-03-29T00:30:00+00:00",  # 02:30 does not exist: fires at 03:30+03:00
        "2026-03-29T23:30:00+00:00",
    ]
    assert local_fires("cron", "30 2 * * *", CHISINAU, after, 4) == [
        "2026-03-27T02:30:00+02:00",
        "2026-03-28T02:30:00+02:00",
        "2026-03-29T03:30:00+03:00",
        "2026-03-30T02:30:00+03:00",
    ]


def test_chisinau_spring_forward_real_time_after_gap_is_unaffected() -> None:
    assert local_fires("cron", "30 3 * * *", CHISINAU, utc(2026, 3, 28, 12), 2) == [
        "2026-03-29T03:30:00+03:00",
        "2026-03-30T03:30:00+03:00",
    ]


def test_chisinau_gap_fire_and_real_fire_on_same_instant_fire_once() -> None:
    # 02:00/02:30 are in the gap and land on 03:00/03:30, which are also named.
    assert fires("cron", "0,30 2,3 * * *", CHISINAU, utc(2026, 3, 28, 23), 5) == [
        "2026-03-29T00:00:00+00:00",
        "2026-03-29T00:30:00+00:00",
        "2026-03-29T23:00:00+00:00",
        "2026-03-29T23:30:00+00:00",
        "2026-03-30T00:00:00+00:00",
    ]


def test_chisinau_fall_back_daily_fires_once_at_first_occurrence() -> None:
    after = utc(2026, 10, 23)
    assert fires("cron", "30 2 * * *", CHISINAU, after, 4) == [
        "2026-10-23T23:30:00+00:00",
        "2026-10-24T23:30:00+00:00",  # 02:30+03:00 (EEST), not again at 02:30+02:00
        "2026-10-26T00:30:00+00:00",
        "2026-10-27T00:30:00+00:00",
    ]
    assert local_fires("cron", "30 2 * * *", CHISINAU, after, 3) == [
        "2026-10-24T02:30:00+03:00",
        "2026-10-25T02:30:00+03:00",
        "2026-10-26T02:30:00+02:00",
    ]


def test_chisinau_hourly_across_both_transitions() -> None:
    assert fires("cron", "0 * * * *", CHISINAU, utc(2026, 3, 28, 22, 30), 4) == [
        "2026-03-28T23:00:00+00:00",  # 01:00+02:00
        "2026-03-29T00:00:00+00:00",  # 02:00 (gap) and 03:00+03:00: one fire
        "2026-03-29T01:00:00+00:00",
        "2026-03-29T02:00:00+00:00",
    ]
    assert fires("cron", "0 * * * *", CHISINAU, utc(2026, 10, 24, 22, 30), 4) == [
        "2026-10-24T23:00:00+00:00",  # 02:00+03:00; the repeated 02:00+02:00 does not fire
        "2026-10-25T01:00:00+00:00",  # 03:00+02:00
        "2026-10-25T02:00:00+00:00",
        "2026-10-25T03:00:00+00:00",
    ]


def test_new_york_spring_forward_daily_0230_fires_0330_edt() -> None:
    assert local_fires("cron", "30 2 * * *", NEW_YORK, utc(2026, 3, 6, 12), 4) == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:30:00-04:00",
        "2026-03-09T02:30:00-04:00",
        "2026-03-10T02:30:00-04:00",
    ]
    assert fires("cron", "30 2 * * *", NEW_YORK, utc(2026, 3, 7, 12), 1) == ["2026-03-08T07:30:00+00:00"]


def test_new_york_fall_back_daily_0130_fires_once_edt() -> None:
    assert fires("cron", "30 1 * * *", NEW_YORK, utc(2026, 10, 30, 12), 4) == [
        "2026-10-31T05:30:00+00:00",
        "2026-11-01T05:30:00+00:00",  # 01:30-04:00 only; 01:30-05:00 (06:30Z) is skipped
        "2026-11-02T06:30:00+00:00",
        "2026-11-03T06:30:00+00:00",
    ]
    assert local_fires("cron", "30 1 * * *", NEW_YORK, utc(2026, 10, 31, 12), 1) == ["2026-11-01T01:30:00-04:00"]


def test_new_york_hourly_across_spring_forward() -> None:
    got = fires("cron", "0 * * * *", NEW_YORK, utc(2026, 3, 8, 4), 6)
    assert got == [
        "2026-03-08T05:00:00+00:00",  # 00:00 EST
        "2026-03-08T06:00:00+00:00",  # 01:00 EST
        "2026-03-08T07:00:00+00:00",  # 02:00 (gap) == 03:00 EDT: one fire
        "2026-03-08T08:00:00+00:00",  # 04:00 EDT
        "2026-03-08T09:00:00+00:00",
        "2026-03-08T10:00:00+00:00",
    ]


def test_new_york_hourly_across_fall_back() -> None:
    got = fires("cron", "0 * * * *", NEW_YORK, utc(2026, 11, 1, 3), 5)
    assert got == [
        "2026-11-01T04:00:00+00:00",  # 00:00 EDT
        "2026-11-01T05:00:00+00:00",  # 01:00 EDT (first occurrence only)
        "2026-11-01T07:00:00+00:00",  # 02:00 EST
        "2026-11-01T08:00:00+00:00",
        "2026-11-01T09:00:00+00:00",
    ]


def test_new_york_every_15_minutes_across_spring_forward() -> None:
    got = fires("cron", "*/15 * * * *", NEW_YORK, utc(2026, 3, 8, 6, 20), 10)
    assert got == [
        "2026-03-08T06:30:00+00:00",  # 01:30 EST
        "2026-03-08T06:45:00+00:00",  # 01:45 EST
        "2026-03-08T07:00:00+00:00",  # 02:00 (gap) and 03:00 EDT
        "2026-03-08T07:15:00+00:00",  # 02:15 (gap) and 03:15 EDT
        "2026-03-08T07:30:00+00:00",
        "2026-03-08T07:45:00+00:00",
        "2026-03-08T08:00:00+00:00",  # 04:00 EDT
        "2026-03-08T08:15:00+00:00",
        "2026-03-08T08:30:00+00:00",
        "2026-03-08T08:45:00+00:00",
    ]


def test_new_york_every_15_minutes_across_fall_back() -> None:
    got = fires("cron", "*/15 * * * *", NEW_YORK, utc(2026, 11, 1, 4, 50), 10)
    assert got == [
        "2026-11-01T05:00:00+00:00",  # 01:00 EDT
        "2026-11-01T05:15:00+00:00",
        "2026-11-01T05:30:00+00:00",
        "2026-11-01T05:45:00+00:00",  # 01:45 EDT; the repeated 01:xx EST hour is silent
        "2026-11-01T07:00:00+00:00",  # 02:00 EST
        "2026-11-01T07:15:00+00:00",
        "2026-11-01T07:30:00+00:00",
        "2026-11-01T07:45:00+00:00",
        "2026-11-01T08:00:00+00:00",
        "2026-11-01T08:15:00+00:00",
    ]


@pytest.mark.parametrize("expr", ["*/15 * * * *", "0 * * * *", "*/7 * * * *", "30 1,2,3 * * *", "*/20 * * * * *"])
@pytest.mark.parametrize(
    ("tz", "start"),
    [
        (NEW_YORK, utc(2026, 3, 8, 3)),
        (NEW_YORK, utc(2026, 11, 1, 3)),
        (CHISINAU, utc(2026, 3, 28, 21)),
        (CHISINAU, utc(2026, 10, 24, 21)),
    ],
)
def test_sequences_across_transitions_are_strictly_increasing(expr: str, tz: str, start: datetime) -> None:
    schedule = parse_schedule("cron", expr, tz, anchor=NOW)
    got = schedule.upcoming(start, 60)
    assert len(got) == 60
    assert_strictly_increasing(got)
    assert all(d.tzinfo is UTC for d in got)
    # Asking from any point in between gives the same continuation.
    for i in range(0, 59, 7):
        assert schedule.next_after(got[i]) == got[i + 1]
        assert schedule.next_after(got[i + 1] - timedelta(seconds=1)) == got[i + 1]


def test_after_inside_the_repeated_hour_continues_after_it() -> None:
    # 06:10Z is 01:10 EST, the second 01:10; 01:15..01:45 already fired as EDT.
    assert fires("cron", "*/15 * * * *", NEW_YORK, utc(2026, 11, 1, 6, 10), 2) == [
        "2026-11-01T07:00:00+00:00",
        "2026-11-01T07:15:00+00:00",
    ]


def test_after_just_past_the_transition_still_sees_the_shifted_gap_fire() -> None:
    # 07:10Z is 03:10 EDT; 02:30 (in the gap) fires at 03:30 EDT = 07:30Z, still ahead.
    assert fires("cron", "30 2 * * *", NEW_YORK, utc(2026, 3, 8, 7, 10), 2) == [
        "2026-03-08T07:30:00+00:00",
        "2026-03-09T06:30:00+00:00",
    ]


def test_real_wall_time_after_gap_fires_before_an_earlier_gap_wall_time() -> None:
    # 03:00 EDT (07:00Z) comes before 02:30-shifted-to-03:30 EDT (07:30Z).
    expr = (
        "DTSTART:20260301T000000\n"
        "RRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=30;BYSECOND=0\n"
        "RRULE:FREQ=DAILY;BYHOUR=3;BYMINUTE=0;BYSECOND=0"
    )
    assert fires("rrule", expr, NEW_YORK, utc(2026, 3, 8, 6), 4) == [
        "2026-03-08T07:00:00+00:00",
        "2026-03-08T07:30:00+00:00",
        "2026-03-09T06:30:00+00:00",
        "2026-03-09T07:00:00+00:00",
    ]


# ----------------------------------------------------------------------- cron syntax


def test_six_fields_have_seconds_first() -> None:
    assert fires("cron", "*/10 * * * * *", "UTC", utc(2026, 3, 8, 4, 0, 5), 4) == [
        "2026-03-08T04:00:10+00:00",
        "2026-03-08T04:00:20+00:00",
        "2026-03-08T04:00:30+00:00",
        "2026-03-08T04:00:40+00:00",
    ]
    # 2026-03-06 is a Friday.
    assert local_fires("cron", "0 30 8 * * 1-5", CHISINAU, utc(2026, 3, 6), 3) == [
        "2026-03-06T08:30:00+02:00",
        "2026-03-09T08:30:00+02:00",
        "2026-03-10T08:30:00+02:00",
    ]


def test_aliases() -> None:
    assert local_fires("cron", "@daily", CHISINAU, utc(2026, 3, 6), 2) == [
        "2026-03-07T00:00:00+02:00",
        "2026-03-08T00:00:00+02:00",
    ]
    assert fires("cron", "@hourly", "UTC", utc(2026, 3, 6, 10, 0), 2) == [
        "2026-03-06T11:00:00+00:00",
        "2026-03-06T12:00:00+00:00",
    ]
    assert fires("cron", "@weekly", "UTC", utc(2026, 3, 6), 1) == ["2026-03-08T00:00:00+00:00"]  # Sunday
    assert fires("cron", "@monthly", "UTC", utc(2026, 3, 6), 1) == ["2026-04-01T00:00:00+00:00"]
    assert fires("cron", "@yearly", "UTC", utc(2026, 3, 6), 1) == ["2027-01-01T00:00:00+00:00"]


def test_extended_cron_forms() -> None:
    assert local_fires("cron", "0 9 L * *", CHISINAU, utc(2026, 1, 6), 3) == [
        "2026-01-31T09:00:00+02:00",
        "2026-02-28T09:00:00+02:00",
        "2026-03-31T09:00:00+03:00",
    ]
    assert local_fires("cron", "0 9 * * 5#2", CHISINAU, utc(2026, 1, 6), 3) == [
        "2026-01-09T09:00:00+02:00",
        "2026-02-13T09:00:00+02:00",
        "2026-03-13T09:00:00+02:00",
    ]
    assert fires("cron", "0 0 29 2 *", "UTC", utc(2026, 3, 1), 2) == [
        "2028-02-29T00:00:00+00:00",
        "2032-02-29T00:00:00+00:00",
    ]


def test_day_of_month_and_day_of_week_both_set_means_either() -> None:
    # The 13th or any Friday (classic cron OR rule); March 2026: Fri 6, 13 (Fri), 20.
    assert fires("cron", "0 0 13 * 5", "UTC", utc(2026, 3, 1), 3) == [
        "2026-03-06T00:00:00+00:00",
        "2026-03-13T00:00:00+00:00",
        "2026-03-20T00:00:00+00:00",
    ]


@pytest.mark.parametrize(
    "expr",
    [
        "*/15 * * * *",
        "30 8 * * 1-5",
        "0 0 13 * 5",
        "5,35 */3 1,15 * *",
        "0 12 * 2,8 sun",
        "15 10 31 * *",
        "*/20 * * * * *",
        "7 30 8 * * 1-5",
        "0 0 1-31 * 1",
        "0 0 */2 * 3",
    ],
)
def test_fast_cron_search_agrees_with_croniter(expr: str) -> None:
    rule = parse_schedule("cron", expr, "UTC", anchor=NOW)._rule
    assert isinstance(rule, CronRule)
    six = len(expr.split()) == 6
    reference = croniter(expr, datetime(2026, 1, 1), second_at_beginning=six)
    rnd = random.Random(expr)
    for _ in range(40):
        wall = datetime(2026, 1, 1) + timedelta(seconds=rnd.randrange(0, 3 * 366 * 86400))
        if rnd.random() < 0.3:
            wall = wall.replace(second=0)
        assert rule.next_wall(wall) == reference.get_next(datetime, start_time=wall), wall


@pytest.mark.parametrize(
    ("expr", "needles"),
    [
        (
            "* * *",
            ["'* * *'", "3 field(s)", "5 fields (minute hour day-of-month month day-of-week)", "6 fields"],
        ),
        ("0 0 * * * * *", ["'0 0 * * * * *'", "7 field(s)", "seconds first"]),
        ("0 25 * * *", ["cron field 2 (hour) '25' is out of range 0..23", "'0 25 * * *'"]),
        ("0 1,25 * * *", ["cron field 2 (hour) '25' is out of range 0..23"]),
        ("61 * * * *", ["cron field 1 (minute) '61' is out of range 0..59"]),
        ("60 * * * * *", ["cron field 1 (second) '60' is out of range 0..59"]),
        ("0 0 * 13 *", ["cron field 4 (month) '13' is out of range 1..12"]),
        ("0 0 * * 8", ["cron field 5 (day-of-week) '8' is out of range 0..7"]),
        ("foo * * * *", ["cron field 1 (minute) 'foo' is not valid", "allowed: 0..59"]),
        ("0 0 15x * *", ["cron field 3 (day-of-month) '15x' is not valid"]),
        ("0 0 * * mon#9", ["cron field 5 (day-of-week) 'mon#9'", "'9'"]),
        ("*/0 * * * *", ["step '/0'", "positive integer"]),
        ("0 0 1,,2 * *", ["'1,,2'", "empty list item"]),
        ("H * * * *", ["'h'", "'H'/'R'", "not supported"]),
        ("0 R * * *", ["'r'", "not supported"]),
        ("@reboot", ["'@reboot'", "@daily"]),
        ("", ["empty"]),
        ("0 0 30 2 *", ["'0 0 30 2 *'", "never fires", "[30]", "[2]"]),
    ],
)
def test_invalid_cron_messages_quote_the_bad_part(expr: str, needles: list[str]) -> None:
    err = error("cron", expr)
    assert err.field == "schedule_expr"
    for needle in needles:
        assert needle in err.message, err.message


# ----------------------------------------------------------------------------- rrule


def test_rrule_weekly_byday_across_dst() -> None:
    expr = "FREQ=WEEKLY;BYDAY=MO,WE,FR;BYHOUR=8;BYMINUTE=30;BYSECOND=0"
    assert fires("rrule", expr, CHISINAU, utc(2026, 3, 25), 5) == [
        "2026-03-25T06:30:00+00:00",
        "2026-03-27T06:30:00+00:00",
        "2026-03-30T05:30:00+00:00",
        "2026-04-01T05:30:00+00:00",
        "2026-04-03T05:30:00+00:00",
    ]
    assert local_fires("rrule", "RRULE:" + expr, CHISINAU, utc(2026, 3, 25), 3) == [
        "2026-03-25T08:30:00+02:00",
        "2026-03-27T08:30:00+02:00",
        "2026-03-30T08:30:00+03:00",
    ]


def test_rrule_count_exhausts_to_none() -> None:
    schedule = parse_schedule("rrule", "DTSTART:20260101T083000\nRRULE:FREQ=DAILY;COUNT=3", CHISINAU, anchor=NOW)
    got = schedule.upcoming(utc(2025, 1, 1), 5)
    assert [d.isoformat() for d in got] == [
        "2026-01-01T06:30:00+00:00",
        "2026-01-02T06:30:00+00:00",
        "2026-01-03T06:30:00+00:00",
    ]
    assert schedule.next_after(got[-1]) is None
    assert schedule.next_after(utc(2030, 1, 1)) is None


@pytest.mark.parametrize(
    ("until", "expected"),
    [
        ("20260103T063000Z", 3),  # UTC form, inclusive (08:30+02:00)
        ("20260102T083000", 2),  # local wall time, inclusive
        ("20260102", 2),  # a date: through the end of that day
        ("20260102T083001", 2),
        ("20260102T082959", 1),
    ],
)
def test_rrule_until(until: str, expected: int) -> None:
    expr = f"DTSTART:20260101T083000\nRRULE:FREQ=DAILY;UNTIL={until}"
    got = fires("rrule", expr, CHISINAU, utc(2025, 1, 1), 5)
    assert got == ["2026-01-01T06:30:00+00:00", "2026-01-02T06:30:00+00:00", "2026-01-03T06:30:00+00:00"][:expected]


def test_rrule_dtstart_with_tzid_is_evaluated_in_that_zone() -> None:
    expr = "DTSTART;TZID=Europe/Chisinau:20260327T083000\nRRULE:FREQ=DAILY"
    # The task zone is UTC, but 08:30 Chisinau wall time is kept across its DST change.
    assert fires("rrule", expr, "UTC", NOW, 4) == [
        "2026-03-27T06:30:00+00:00",
        "2026-03-28T06:30:00+00:00",
        "2026-03-29T05:30:00+00:00",
        "2026-03-30T05:30:00+00:00",
    ]


def test_rrule_floating_dtstart_is_task_local() -> None:
    assert fires("rrule", "DTSTART:20260101T083000\nRRULE:FREQ=DAILY;COUNT=2", NEW_YORK, utc(2025, 1, 1), 5) == [
        "2026-01-01T13:30:00+00:00",
        "2026-01-02T13:30:00+00:00",
    ]


def test_rrule_utc_dtstart_becomes_task_wall_time() -> None:
    # 06:30Z is 08:30 in Chisinau in winter; the rule keeps 08:30 local after DST.
    assert local_fires("rrule", "DTSTART:20260327T063000Z\nRRULE:FREQ=DAILY", CHISINAU, NOW, 4) == [
        "2026-03-27T08:30:00+02:00",
        "2026-03-28T08:30:00+02:00",
        "2026-03-29T08:30:00+03:00",
        "2026-03-30T08:30:00+03:00",
    ]


def test_rrule_without_dtstart_is_anchored_at_midnight_of_the_anchor_day() -> None:
    # Created at 08:15:42.123456 in Chisinau: the rule starts at 00:00 that day, so the fields the
    # rule does not give (hour, minute, second) are 0 and never the creation instant's.
    anchor = datetime(2026, 3, 1, 6, 15, 42, 123456, tzinfo=UTC)
    assert local_fires_from("FREQ=DAILY;BYHOUR=9", CHISINAU, anchor, 2) == [
        "2026-03-01T09:00:00+02:00",
        "2026-03-02T09:00:00+02:00",
    ]
    assert local_fires_from("FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=8;BYMINUTE=30", CHISINAU, anchor, 3) == [
        "2026-03-02T08:30:00+02:00",
        "2026-03-04T08:30:00+02:00",
        "2026-03-09T08:30:00+02:00",
    ]
    # INTERVAL counts from midnight too: every 15 minutes is :00, :15, :30, :45.
    assert local_fires_from("FREQ=MINUTELY;INTERVAL=15", CHISINAU, anchor, 2) == [
        "2026-03-01T08:30:00+02:00",
        "2026-03-01T08:45:00+02:00",
    ]
    # The anchor's day in the task zone, not in UTC: 23:30 UTC on 1 March is 2 March in Chisinau.
    late = datetime(2026, 3, 1, 23, 30, 5, tzinfo=UTC)
    assert local_fires_from("FREQ=DAILY;INTERVAL=2", CHISINAU, late, 2) == [
        "2026-03-04T00:00:00+02:00",
        "2026-03-06T00:00:00+02:00",
    ]


def test_rrule_count_without_dtstart_counts_occurrences_after_the_anchor() -> None:
    # Midnight-anchored, yet the occurrences already past at creation do not use up COUNT:
    # COUNT=3 fires three times after the anchor.
    anchor = datetime(2026, 3, 1, 6, 15, 42, 123456, tzinfo=UTC)  # 08:15:42 in Chisinau
    schedule = parse_schedule("rrule", "FREQ=HOURLY;COUNT=3", CHISINAU, anchor=anchor)
    got = schedule.upcoming(utc(2025, 1, 1), 5)
    assert [format_local(d, schedule.tz) for d in got] == [
        "2026-03-01T09:00:00+02:00",
        "2026-03-01T10:00:00+02:00",
        "2026-03-01T11:00:00+02:00",
    ]
    # Stable across calls: the same anchor gives the same (cached) schedule and COUNT.
    assert parse_schedule("rrule", "FREQ=HOURLY;COUNT=3", CHISINAU, anchor=anchor) is schedule
    # Strictly after: an occurrence exactly at the anchor is not counted (it is not after creation).
    on_the_hour = utc(2026, 5, 1, 10)  # 13:00 in Chisinau (EEST)
    later = parse_schedule("rrule", "FREQ=HOURLY;COUNT=2", CHISINAU, anchor=on_the_hour)
    assert [format_local(d, later.tz) for d in later.upcoming(utc(2026, 4, 1), 5)] == [
        "2026-05-01T14:00:00+03:00",
        "2026-05-01T15:00:00+03:00",
    ]
    # EXRULE counts the same way: the first two occurrences after the anchor are excluded.
    expr = "RRULE:FREQ=HOURLY;COUNT=4\nEXRULE:FREQ=HOURLY;COUNT=2"
    excluded = parse_schedule("rrule", expr, CHISINAU, anchor=anchor)
    assert [format_local(d, excluded.tz) for d in excluded.upcoming(anchor, 5)] == [
        "2026-03-01T11:00:00+02:00",
        "2026-03-01T12:00:00+02:00",
    ]


def test_rrule_bysetpos_last_friday() -> None:
    expr = "RRULE:FREQ=MONTHLY;BYDAY=FR;BYSETPOS=-1;BYHOUR=17;BYMINUTE=0;BYSECOND=0"
    assert local_fires("rrule", expr, CHISINAU, NOW, 3) == [
        "2026-03-27T17:00:00+02:00",
        "2026-04-24T17:00:00+03:00",
        "2026-05-29T17:00:00+03:00",
    ]


def test_rrule_set_with_rdate_and_exdate() -> None:
    expr = "DTSTART:20260105T090000\nRRULE:FREQ=WEEKLY;BYDAY=MO;COUNT=3\nEXDATE:20260112T090000\nRDATE:20260110T120000"
    assert local_fires("rrule", expr, CHISINAU, utc(2025, 1, 1), 5) == [
        "2026-01-05T09:00:00+02:00",
        "2026-01-10T12:00:00+02:00",
        "2026-01-19T09:00:00+02:00",
    ]
    # A date-only EXDATE removes that whole day.
    by_day = "DTSTART:20260105T090000\nRRULE:FREQ=DAILY;COUNT=3\nEXDATE;VALUE=DATE:20260106"
    assert local_fires("rrule", by_day, CHISINAU, utc(2025, 1, 1), 5) == [
        "2026-01-05T09:00:00+02:00",
        "2026-01-07T09:00:00+02:00",
    ]


def test_rrule_cursor_jump_ahead_with_sparse_rule() -> None:
    reference = rrulestr("FREQ=DAILY;INTERVAL=4;BYMONTH=6", dtstart=datetime(1990, 6, 2, 7, 45))
    cursor = Cursor(reference)
    for wall in [
        datetime(2026, 3, 1),
        datetime(2026, 6, 17, 7, 45),
        datetime(2026, 6, 30),
        datetime(2024, 6, 3),
    ]:
        assert cursor.after(wall) == reference.after(wall), wall


def test_rrule_with_ancient_dtstart_is_fast_and_keeps_its_phase() -> None:
    # 1970-01-01T00:00:13 Chisinau wall time + k*7s: the first after 02:00:00 local is 02:00:05.
    expr = "DTSTART:19700101T000013\nRRULE:FREQ=SECONDLY;INTERVAL=7"
    assert fires("rrule", expr, CHISINAU, NOW, 2) == [
        "2026-03-01T00:00:05+00:00",
        "2026-03-01T00:00:12+00:00",
    ]
    weekly = "DTSTART:19000105T083000\nRRULE:FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,FR"
    assert local_fires("rrule", weekly, CHISINAU, NOW, 3) == [
        "2026-03-16T08:30:00+02:00",
        "2026-03-20T08:30:00+02:00",
        "2026-04-06T08:30:00+03:00",
    ]


def test_rrule_accepts_escaped_newlines() -> None:
    assert fires("rrule", "DTSTART:20260105T090000\\nRRULE:FREQ=WEEKLY;COUNT=2", CHISINAU, utc(2025, 1, 1), 5) == [
        "2026-01-05T07:00:00+00:00",
        "2026-01-12T07:00:00+00:00",
    ]


def test_rrule_wall_time_in_gap_follows_the_dst_rule() -> None:
    expr = "DTSTART:20260301T000000\nRRULE:FREQ=DAILY;BYHOUR=2;BYMINUTE=30;BYSECOND=0"
    assert local_fires("rrule", expr, NEW_YORK, utc(2026, 3, 7), 3) == [
        "2026-03-07T02:30:00-05:00",
        "2026-03-08T03:30:00-04:00",
        "2026-03-09T02:30:00-04:00",
    ]


@pytest.mark.parametrize(
    "rule",
    [
        "FREQ=MONTHLY;BYDAY=MO,TU;BYSETPOS=-1",
        "FREQ=WEEKLY;INTERVAL=2;BYDAY=TU,TH;COUNT=150",
        "FREQ=HOURLY;INTERVAL=5;BYHOUR=1,6,11,16,21",
        "FREQ=DAILY;INTERVAL=3;COUNT=400",
        "FREQ=MONTHLY;BYMONTHDAY=31",
        "FREQ=MINUTELY;INTERVAL=7;BYHOUR=9,10;COUNT=1000",
        # no COUNT and a fixed-length period: the cursor jumps DTSTART ahead
        "FREQ=WEEKLY;INTERVAL=3;BYDAY=MO,FR",
        "FREQ=MINUTELY;INTERVAL=13;BYHOUR=9",
        "FREQ=DAILY;INTERVAL=4;BYMONTH=6",
        "FREQ=HOURLY;INTERVAL=5;BYSETPOS=1;BYMINUTE=10,20",
    ],
)
def test_rrule_cursor_agrees_with_dateutil(rule: str) -> None:
    reference = rrulestr(rule, dtstart=datetime(2025, 1, 31, 9, 17, 23))
    cursor = Cursor(reference)
    rnd = random.Random(rule)
    walls = sorted(datetime(2025, 1, 1) + timedelta(seconds=rnd.randrange(0, 86400 * 400)) for _ in range(60))
    walls += rnd.sample(walls, 30)  # and some going backwards
    occurrences: list[datetime] = []
    for occurrence in reference:  # the reference sequence, once, up to past the last wall
        occurrences.append(occurrence)
        if occurrence > max(walls):
            break
    for wall in walls:
        index = bisect.bisect_right(occurrences, wall)
        assert cursor.after(wall) == (occurrences[index] if index < len(occurrences) else None), wall


@pytest.mark.parametrize(
    ("expr", "needles"),
    [
        ("FREQ=DAILY;BYHOUR=25", ["BYHOUR=25", "BYHOUR must be 0..23", "'FREQ=DAILY;BYHOUR=25'"]),
        ("FREQ=DAILY;BYMINUTE=60", ["BYMINUTE=60", "0..59"]),
        ("FREQ=DAILY;BYSECOND=60", ["BYSECOND=60", "0..59"]),
        ("FREQ=YEARLY;BYMONTH=13", ["BYMONTH=13", "1..12"]),
        ("FREQ=MONTHLY;BYMONTHDAY=0", ["BYMONTHDAY=0", "1..31 or -31..-1"]),
        ("FREQ=MONTHLY;BYMONTHDAY=32", ["BYMONTHDAY=32"]),
        ("FREQ=DAILY;BYHOUR=8am", ["'8AM'", "not an integer"]),
        ("FREQ=FORTNIGHTLY", ["FREQ=FORTNIGHTLY", "WEEKLY"]),
        ("FREQ=DAILY;COUNT=0", ["COUNT=0", ">= 1"]),
        ("FREQ=DAILY;INTERVAL=-2", ["INTERVAL=-2"]),
        ("FREQ=DAILY;COUNT=2;UNTIL=20270101", ["COUNT and UNTIL"]),
        ("FREQ=DAILY;FOO=1", ["'FOO'", "FREQ, INTERVAL"]),
        ("FREQ=WEEKLY;BYDAY=XX", ["'XX'", "MO,TU"]),
        ("FREQ=WEEKLY;BYDAY=1MO", ["'1MO'", "MONTHLY"]),
        ("BYDAY=MO", ["no FREQ"]),
        ("FREQ=DAILY;FREQ=WEEKLY", ["FREQ is given twice"]),
        ("hello", ["'hello'", "not understood"]),
        ("", ["empty"]),
        ("FREQ=YEARLY;BYMONTH=2;BYMONTHDAY=30", ["never fires", "[30]", "[2]"]),
        ("FREQ=MONTHLY;BYDAY=+6MO", ["never fires"]),
        ("FREQ=HOURLY;INTERVAL=2;BYHOUR=3", ["never fires", "INTERVAL"]),
        ("FREQ=DAILY;BYWEEKNO=1", ["BYWEEKNO needs FREQ=YEARLY"]),
        ("DTSTART:2026-13-01\nRRULE:FREQ=DAILY", ["DTSTART '2026-13-01'", "month"]),
        ("DTSTART:tomorrow\nRRULE:FREQ=DAILY", ["DTSTART 'tomorrow'", "YYYYMMDDTHHMMSS"]),
        ("DTSTART;TZID=Mars/Base:20260101T000000\nRRULE:FREQ=DAILY", ["'Mars/Base'", "IANA"]),
        ("DTSTART:20260101T000000\nDTSTART:20260102T000000\nRRULE:FREQ=DAILY", ["more than one DTSTART"]),
        ("DTSTART:20260101T000000", ["no RRULE or RDATE"]),
        ("FREQ=SECONDLY;COUNT=100001", ["COUNT=100001 is above 100000", "UNTIL"]),
        ("FREQ=DAILY;" + "BYHOUR=1;" * 500, ["characters long; at most 4096"]),
    ],
)
def test_invalid_rrule_messages(expr: str, needles: list[str]) -> None:
    err = error("rrule", expr)
    assert err.field == "schedule_expr"
    for needle in needles:
        assert needle in err.message, err.message


# ------------------------------------------------------------------------------ once


def test_once_forms() -> None:
    assert fires("once", "2026-12-01T08:30:00+02:00", CHISINAU, NOW, 2) == ["2026-12-01T06:30:00+00:00"]
    assert fires("once", "2026-12-01T06:30:00Z", NEW_YORK, NOW, 2) == ["2026-12-01T06:30:00+00:00"]
    assert fires("once", "2026-12-01T08:30", CHISINAU, NOW, 2) == ["2026-12-01T06:30:00+00:00"]
    assert fires("once", "2026-12-01 08:30:00", CHISINAU, NOW, 2) == ["2026-12-01T06:30:00+00:00"]
    assert fires("once", "2026-07-01T08:30", CHISINAU, NOW, 2) == ["2026-07-01T05:30:00+00:00"]


def test_once_in_dst_gap_and_overlap() -> None:
    assert local_fires("once", "2026-03-08T02:30", NEW_YORK, NOW, 1) == ["2026-03-08T03:30:00-04:00"]
    assert local_fires("once", "2026-11-01T01:30", NEW_YORK, NOW, 1) == ["2026-11-01T01:30:00-04:00"]


def test_once_is_exhausted_after_its_instant() -> None:
    schedule = parse_schedule("once", "2026-12-01T06:30:00Z", "UTC", anchor=NOW)
    assert schedule.next_after(utc(2026, 12, 1, 6, 29, 59)) == utc(2026, 12, 1, 6, 30)
    assert schedule.next_after(utc(2026, 12, 1, 6, 30)) is None


def test_once_in_the_past_is_rejected_by_validate() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_schedule("once", "2020-01-01T00:00:00Z", CHISINAU, now=NOW, anchor=NOW)
    assert info.value.field == "schedule_expr"
    assert info.value.message == (
        "once '2020-01-01T00:00:00Z' is in the past (it is 2020-01-01T02:00:00+02:00; "
        "now is 2026-03-01T02:00:00+02:00 in Europe/Chisinau); give a future instant"
    )
    with pytest.raises(InvalidArgument, match="in the past"):
        validate_schedule("once", "2026-03-01T00:00:00Z", "UTC", now=NOW, anchor=NOW)  # == now


@pytest.mark.parametrize(
    ("expr", "needle"),
    [("2026-12-01", "no time of day"), ("tomorrow", "not an ISO 8601"), ("", "not an ISO 8601")],
)
def test_invalid_once(expr: str, needle: str) -> None:
    err = error("once", expr)
    assert needle in err.message and f"'{expr}'" in err.message


# ------------------------------------------------------------------------ validation


def test_validate_accepts_future_schedules() -> None:
    schedule = validate_schedule("cron", "0 0 29 2 *", "UTC", now=NOW, anchor=NOW)
    assert isinstance(schedule, Schedule)
    assert schedule.kind == "cron" and schedule.expr == "0 0 29 2 *" and schedule.tz.key == "UTC"


def test_validate_rejects_impossible_cron() -> None:
    with pytest.raises(InvalidArgument) as info:
        validate_schedule("cron", "0 0 30 2 *", "UTC", now=NOW, anchor=NOW)
    assert "'0 0 30 2 *' never fires" in info.value.message


def test_validate_rejects_exhausted_rrule() -> None:
    expr = "DTSTART:20200101T000000\nRRULE:FREQ=DAILY;COUNT=2"
    with pytest.raises(InvalidArgument) as info:
        validate_schedule("rrule", expr, CHISINAU, now=NOW, anchor=NOW)
    assert info.value.field == "schedule_expr"
    assert "'DTSTART:20200101T000000\\nRRULE:FREQ=DAILY;COUNT=2' never fires after now" in info.value.message
    assert "COUNT/UNTIL" in info.value.message
    with pytest.raises(InvalidArgument, match="never fires"):
        validate_schedule(
            "rrule", "DTSTART:20200101T000000\nRRULE:FREQ=DAILY;UNTIL=20210101", "UTC", now=NOW, anchor=NOW
        )


def test_unknown_kind() -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_schedule("interval", "5", "UTC", anchor=NOW)
    assert info.value.field == "schedule_kind" and "'interval'" in info.value.message


# -------------------------------------------------------------------------- timezones


def test_timezone_errors() -> None:
    with pytest.raises(InvalidArgument) as info:
        load_timezone("Mars/Base")
    assert info.value.field == "timezone"
    assert info.value.message == "unknown timezone 'Mars/Base'; use an IANA name such as 'Europe/Chisinau' or 'UTC'"
    with pytest.raises(InvalidArgument, match="did you mean 'Europe/Chisinau'"):
        load_timezone("europe/chisinau")
    with pytest.raises(InvalidArgument, match="'Etc/GMT-3' for a fixed UTC\\+03:00"):
        load_timezone("+03:00")
    for bad in ["", "localtime", "../etc/passwd", "/usr/share/zoneinfo/UTC"]:
        with pytest.raises(InvalidArgument):
            load_timezone(bad)
    with pytest.raises(InvalidArgument) as info:
        parse_schedule("cron", "* * * * *", "Mars/Base", anchor=NOW)
    assert info.value.field == "timezone"
    assert load_timezone(CHISINAU) == ZoneInfo(CHISINAU)


def test_format_local() -> None:
    tz = load_timezone(CHISINAU)
    assert format_local(utc(2026, 3, 29, 0, 30), tz) == "2026-03-29T03:30:00+03:00"
    assert format_local(utc(2026, 1, 1, 6, 30), tz) == "2026-01-01T08:30:00+02:00"


# ---------------------------------------------------------------- event and condition


@pytest.mark.parametrize("expr", ["orders.created", "orders.*", "*", "svc:build-done", "a_b.C-9"])
def test_event_patterns(expr: str) -> None:
    schedule = validate_schedule("event", expr, "UTC", now=NOW, anchor=NOW)
    assert schedule.kind == "event" and schedule.kind not in TIME_KINDS
    assert schedule.next_after(NOW) is None
    assert schedule.upcoming(NOW, 3) == []


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("orders created", "contains ' '"),
        ("orders/created", "contains '/'"),
        ("", "empty"),
        ("a..b", "empty segment"),
        (".a", "empty segment"),
        ("x" * 300, "longer than 256"),
        ("orders.>", "contains '>'"),
        ("a.*.b", "whole last segment"),
        ("or*ders", "whole last segment"),
        ("orders*", "whole last segment"),
    ],
)
def test_invalid_event_patterns(expr: str, needle: str) -> None:
    assert needle in error("event", expr).message


@pytest.mark.parametrize(
    ("expr", "seconds"),
    [
        ("30", 30),
        ("1", 1),
        ("2.5", 2.5),
        ("PT30S", 30),
        ("PT1M30S", 90),
        ("PT2H", 7200),
        ("P1D", 86400),
        ("P1W", 604800),
    ],
)
def test_condition_interval(expr: str, seconds: float) -> None:
    schedule = validate_schedule("condition", expr, CHISINAU, now=NOW, anchor=NOW)
    assert schedule.interval == timedelta(seconds=seconds)
    after = datetime(2026, 3, 1, 10, tzinfo=ZoneInfo(CHISINAU))
    nxt = schedule.next_after(after)
    assert nxt == after + timedelta(seconds=seconds) and nxt is not None and nxt.tzinfo is UTC


@pytest.mark.parametrize(
    ("expr", "needle"),
    [
        ("0.5", "shorter than 1 second"),
        ("PT0S", "shorter than 1 second"),
        ("0", "shorter than 1 second"),
        ("P1M", "years and months are not allowed"),
        ("P", "not valid"),
        ("abc", "not valid"),
        ("-5", "not valid"),
        ("P400D", "longer than 365 days"),
    ],
)
def test_invalid_condition_interval(expr: str, needle: str) -> None:
    err = error("condition", expr)
    assert needle in err.message and f"'{expr}'" in err.message


# -------------------------------------------------------------------------- preview


def test_preview_defaults_after_to_now_and_returns_utc() -> None:
    got = preview("cron", "30 8 * * *", CHISINAU, count=3, after=None, now=utc(2026, 3, 28, 12))
    assert [d.isoformat() for d in got] == [
        "2026-03-29T05:30:00+00:00",
        "2026-03-30T05:30:00+00:00",
        "2026-03-31T05:30:00+00:00",
    ]
    assert all(d.tzinfo is UTC for d in got)


def test_preview_with_after_in_other_zone() -> None:
    after = datetime(2026, 3, 28, 8, 30, tzinfo=ZoneInfo(CHISINAU))  # exactly a fire: excluded
    got = preview("cron", "30 8 * * *", CHISINAU, count=1, after=after, now=NOW)
    assert [d.isoformat() for d in got] == ["2026-03-29T05:30:00+00:00"]


def test_preview_of_exhausted_schedule_is_empty() -> None:
    assert preview("once", "2020-01-01T00:00:00Z", "UTC", count=5, after=None, now=NOW) == []


def test_preview_rrule_without_dtstart_anchors_at_now() -> None:
    # Midnight of now's day; COUNT counts the occurrences after now.
    got = preview("rrule", "FREQ=DAILY;COUNT=2", "UTC", count=5, after=utc(2026, 1, 1), now=utc(2026, 3, 1, 9, 15))
    assert [d.isoformat() for d in got] == ["2026-03-02T00:00:00+00:00", "2026-03-03T00:00:00+00:00"]


@pytest.mark.parametrize("count", [0, -1, 101, True, 2.0])
def test_preview_count_bounds(count: object) -> None:
    with pytest.raises(InvalidArgument) as info:
        preview("cron", "* * * * *", "UTC", count=count, after=None, now=NOW)  # type: ignore[arg-type]
    assert info.value.field == "count" and "1 to 100" in info.value.message


def test_preview_count_limits_are_inclusive() -> None:
    assert len(preview("cron", "* * * * *", "UTC", count=1, after=None, now=NOW)) == 1
    assert len(preview("cron", "* * * * *", "UTC", count=100, after=None, now=NOW)) == 100


def test_preview_rejects_naive_after() -> None:
    with pytest.raises(InvalidArgument) as info:
        preview("cron", "* * * * *", "UTC", count=1, after=datetime(2026, 3, 1, 8), now=NOW)
    assert info.value.field == "after" and "'2026-03-01 08:00:00'" in info.value.message


# ---------------------------------------------------------------- caching and contracts


def test_parse_is_cached_and_ignores_anchor_when_unused() -> None:
    a = parse_schedule("cron", "*/5 * * * *", CHISINAU, anchor=NOW)
    b = parse_schedule("cron", "*/5 * * * *", CHISINAU, anchor=utc(2030, 1, 1))
    assert a is b
    c = parse_schedule("rrule", "DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "UTC", anchor=NOW)
    d = parse_schedule("rrule", "DTSTART:20260101T000000\nRRULE:FREQ=DAILY", "UTC", anchor=utc(2030, 1, 1))
    assert c is d


def test_memo_returns_consistent_answers() -> None:
    schedule = parse_schedule("cron", "0 9 * * *", "UTC", anchor=NOW)
    first = schedule.next_after(NOW)
    assert schedule.next_after(NOW) == first == utc(2026, 3, 1, 9)
    assert schedule.next_after(utc(2026, 3, 1, 9)) == utc(2026, 3, 2, 9)
    assert schedule.next_after(NOW.astimezone(ZoneInfo(NEW_YORK))) == first


def test_naive_internal_instants_are_a_programming_error() -> None:
    schedule = parse_schedule("cron", "* * * * *", "UTC", anchor=NOW)
    with pytest.raises(ValueError, match="tz-aware"):
        schedule.next_after(datetime(2026, 1, 1))
    with pytest.raises(ValueError, match="tz-aware"):
        parse_schedule("cron", "* * * * *", "UTC", anchor=datetime(2026, 1, 1))


def test_far_future_does_not_overflow() -> None:
    schedule = parse_schedule("cron", "0 0 1 1 *", "UTC", anchor=NOW)
    assert schedule.next_after(datetime(9999, 6, 1, tzinfo=UTC)) is None
    assert parse_schedule("condition", "30", "UTC", anchor=NOW).next_after(datetime.max.replace(tzinfo=UTC)) is None
