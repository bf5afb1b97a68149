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
"""

from __future__ import annotations

import bisect
import contextlib
import functools
import itertools
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Final, Literal, cast, get_args
from zoneinfo import ZoneInfo, available_timezones

from croniter import croniter
from dateutil import rrule as du_rrule

from store.errors import InvalidArgument

__all__ = [
    "MAX_PREVIEW",
    "SCHEDULE_KINDS",
    "TIME_KINDS",
    "Schedule",
    "ScheduleKind",
    "format_local",
    "load_timezone",
    "parse_schedule",
    "preview",
    "validate_schedule",
]

ScheduleKind = Literal["cron", "rrule", "once", "event", "condition"]
SCHEDULE_KINDS: Final[frozenset[str]] = frozenset(get_args(ScheduleKind))
TIME_KINDS: Final[frozenset[str]] = frozenset({"cron", "rrule", "once"})

MAX_PREVIEW: Final = 100
MIN_CONDITION_INTERVAL: Final = timedelta(seconds=1)
MAX_CONDITION_INTERVAL: Final = timedelta(days=365)
MAX_EVENT_PATTERN_LEN: Final = 256
MAX_EXPR_LEN: Final = 4096
# Bounds the walk from DTSTART that a COUNT rule needs (COUNT cannot be fast-forwarded).
MAX_RRULE_COUNT: Final = 100_000

# A pathological expression must not loop forever: after this many candidate wall
# times without a fire, the schedule is treated as having no further fire.
_ITERATION_CAP: Final = 10_000
# A cron expression that matches no day within this many years never fires (29 Feb
# has gaps of up to 8 years, e.g. 2096 -> 2104).
_CRON_HORIZON_YEARS: Final = 10
# How far back to look for a DST gap that could make a wall time before `after`'s own
# wall time fire after `after` (covers every real-world offset jump, including a
# skipped day).
_GAP_LOOKBACK: Final = timedelta(days=2)

_ONE_SECOND: Final = timedelta(seconds=1)
_ONE_DAY: Final = timedelta(days=1)
_ONE_MICROSECOND: Final = timedelta(microseconds=1)

_SCHEDULE_FIELD: Final = "schedule_expr"
_IANA_HINT: Final = "use an IANA name such as 'Europe/Chisinau' or 'UTC'"


def _q(text: str, limit: int = 200) -> str:
    """Quote user text for an error message (one line, bounded length)."""
    flat = text.replace("\r", "").replace("\n", "\\n")
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return f"'{flat}'"


def _bad(message: str) -> InvalidArgument:
    return InvalidArgument(_SCHEDULE_FIELD, message)


def _require_aware(value: datetime, name: str) -> None:
    """Internal contract: the engine only ever passes tz-aware instants."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a tz-aware datetime, got {value!r}")


# --------------------------------------------------------------------------- timezones

_NOT_ZONES: Final = frozenset({"localtime", "posixrules", "factory"})


def load_timezone(name: str) -> ZoneInfo:
    """Load an IANA zone by name; raise InvalidArgument("timezone", ...) for anything else."""
    if not isinstance(name, str) or not name.strip():
        raise InvalidArgument("timezone", f"timezone {name!r} is empty; {_IANA_HINT}")
    return _load_timezone(name)


@functools.lru_cache(maxsize=1024)
def _load_timezone(name: str) -> ZoneInfo:
    if name.lower() not in _NOT_ZONES:
        try:
            return ZoneInfo(name)
        except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError
            pass
    raise InvalidArgument("timezone", _unknown_timezone_message(name))


@functools.lru_cache(maxsize=1)
def _zone_names_by_lower() -> dict[str, str]:
    return {zone.lower(): zone for zone in available_timezones() if zone.lower() not in _NOT_ZONES}


_OFFSET_LIKE = re.compile(r"(?:utc|gmt)?\s*([+-])\s*(\d{1,2})(?::?(\d{2}))?", re.IGNORECASE | re.ASCII)


def _unknown_timezone_message(name: str) -> str:
    message = f"unknown timezone {_q(name)}; {_IANA_HINT}"
    stripped = name.strip()
    guess = _zone_names_by_lower().get(stripped.lower().replace(" ", "_"))
    if guess is not None:
        return f"{message} (did you mean '{guess}'?)"
    offset = _OFFSET_LIKE.fullmatch(stripped)
    if offset is not None:
        sign, hours, minutes = offset.groups()
        message += "; a UTC offset is not a zone name: prefer the city's zone so DST is followed"
        if int(minutes or 0) == 0 and int(hours) <= 14:
            etc = "Etc/GMT" if int(hours) == 0 else f"Etc/GMT{'-' if sign == '+' else '+'}{int(hours)}"
            message += f", or '{etc}' for a fixed UTC{sign}{int(hours):02d}:00 (Etc signs are inverted)"
    return message


def format_local(instant: datetime, tz: ZoneInfo) -> str:
    """ISO 8601 of `instant` in zone `tz` with its offset, e.g. '2026-03-29T03:30:00+03:00'."""
    _require_aware(instant, "instant")
    return instant.astimezone(tz).isoformat()


# ------------------------------------------------------------------------------- rules


class _Rule:
    """How one schedule computes its next fire; `after` is always tz-aware UTC."""

    def next_after(self, after: datetime) -> datetime | None:
        raise NotImplementedError


class _NeverRule(_Rule):
    """`event` schedules: fired by published events, never by the clock."""

    def next_after(self, after: datetime) -> datetime | None:
        return None


@dataclass(frozen=True)
class _OnceRule(_Rule):
    instant: datetime  # UTC

    def next_after(self, after: datetime) -> datetime | None:
        return self.instant if self.instant > after else None


@dataclass(frozen=True)
class _IntervalRule(_Rule):
    interval: timedelta

    def next_after(self, after: datetime) -> datetime | None:
        return (after + self.interval).astimezone(UTC)


def _wall_to_utc(wall: datetime, tz: ZoneInfo) -> datetime:
    # fold=0: a wall time in a gap uses the pre-transition offset (lands after the gap
    # at the same distance), an ambiguous wall time is its first occurrence.
    return wall.replace(tzinfo=tz).astimezone(UTC)


def _start_wall(after: datetime, tz: ZoneInfo) -> datetime:
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


class _WallRule(_Rule):
    """A rule iterated on naive wall-clock times in `tz` (cron, rrule)."""

    tz: ZoneInfo

    def next_wall(self, wall: datetime) -> datetime | None:
        """The first matching naive wall time strictly after `wall`, or None."""
        raise NotImplementedError

    def next_after(self, after: datetime) -> datetime | None:
        tz = self.tz
        wall: datetime | None = _start_wall(after, tz)
        for _ in range(_ITERATION_CAP):
            assert wall is not None
            wall = self.next_wall(wall)
            if wall is None:
                return None
            instant = _wall_to_utc(wall, tz)
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
                for _ in range(_ITERATION_CAP):
                    assert probe is not None
                    probe = self.next_wall(probe)
                    if probe is None or probe >= real_wall:
                        break
                    candidate = _wall_to_utc(probe, tz)
                    if after < candidate < instant:
                        return candidate
            return instant
        return None


# -------------------------------------------------------------------------------- cron

_CRON_ALIASES: Final = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

_CRON_FIELDS_HELP: Final = (
    "use 5 fields (minute hour day-of-month month day-of-week), e.g. '30 8 * * 1-5', "
    "or 6 fields with seconds first (second minute hour day-of-month month day-of-week), "
    "e.g. '0 30 8 * * 1-5', or an alias: @hourly, @daily, @weekly, @monthly, @yearly"
)


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    low: int
    high: int
    extra: str = ""

    def allowed(self) -> str:
        extra = f", {self.extra}" if self.extra else ""
        return f"allowed: {self.low}..{self.high}, '*', lists 'a,b', ranges 'a-b', steps '*/n' or 'a-b/n'{extra}"


_SECOND = _FieldSpec("second", 0, 59)
_CRON5: Final = (
    _FieldSpec("minute", 0, 59),
    _FieldSpec("hour", 0, 23),
    _FieldSpec("day-of-month", 1, 31, "'L' (last day), 'nW' (nearest weekday)"),
    _FieldSpec("month", 1, 12, "names JAN..DEC"),
    _FieldSpec("day-of-week", 0, 7, "0 or 7 = Sunday, names SUN..SAT, 'FRI#2' (2nd Friday), 'L5' (last Friday)"),
)
_CRON6: Final = (_SECOND, *_CRON5)

_INT_RANGE = re.compile(r"(\d+)(?:-(\d+))?", re.ASCII)
_HASHED = re.compile(r"[hr](?:\(.*\))?", re.ASCII)
_NEAREST_WEEKDAY = re.compile(r"\d+w|w\d+", re.ASCII)
_MAX_MONTH_DAYS: Final = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _check_cron_field(expr: str, number: int, token: str, spec: _FieldSpec) -> None:
    where = f"cron field {number} ({spec.name})"
    for part in token.lower().split(","):
        if not part:
            raise _bad(f"{where} {_q(token)} has an empty list item in {_q(expr)}; {spec.allowed()}")
        base, slash, step = part.partition("/")
        if _HASHED.fullmatch(base):
            raise _bad(
                f"{where} {_q(part)} in {_q(expr)}: hashed/random 'H'/'R' values are not "
                f"supported; give explicit values ({spec.allowed()})"
            )
        if slash and not (step.isascii() and step.isdigit() and int(step) > 0):
            raise _bad(f"{where} step {_q('/' + step)} in {_q(expr)} must be a positive integer")
        match = _INT_RANGE.fullmatch(base)
        if match is None:
            continue  # '*', names, L/W/# forms: croniter judges them below
        for bound in match.groups():
            if bound is not None and not spec.low <= int(bound) <= spec.high:
                raise _bad(f"{where} {_q(bound)} is out of range {spec.low}..{spec.high} in {_q(expr)}")


def _croniter_reason(exc: Exception) -> str:
    """croniter's message without its traceback, bracketed echo and debug tail."""
    lines = str(exc).strip().splitlines()
    text = lines[-1] if lines else ""
    text = re.sub(r"\[[^\]]*\]\s*", "", text).split("  Cron:")[0]
    text = re.sub(r"^(is not acceptable[.,]?\s*)", "", text).strip(" .")
    return text


def _cron_expand(body: str, six: bool) -> tuple[list[list[Any]], dict[Any, Any]]:
    expanded, nth = croniter.expand(body, second_at_beginning=six)
    return cast(list[list[Any]], expanded), cast(dict[Any, Any], nth)


def _int_values(values: list[Any], spec: _FieldSpec) -> tuple[int, ...]:
    if values == ["*"]:
        return tuple(range(spec.low, spec.high + 1))
    return tuple(sorted(int(v) for v in values))


class _CronRule(_WallRule):
    """Fast next-wall-time search over cron fields (bisect inside a day, day-by-day
    outside), with croniter's own iterator as a fallback for L/W/# forms.

    croniter parses and validates; its iterator is not used for plain fields because
    it costs ~80 us per step on the dev container, where a whole `next_after` with this
    search costs 10-20 us (memo hit: ~1 us; the L/W/# fallback: ~250 us)."""

    def __init__(self, expr: str, tz: ZoneInfo) -> None:
        self.tz = tz
        text = expr.strip()
        if not text:
            raise _bad(f"cron expression is empty; {_CRON_FIELDS_HELP}")
        if text.startswith("@"):
            alias = _CRON_ALIASES.get(text.lower())
            if alias is None:
                raise _bad(f"cron alias {_q(text)} is not supported; {_CRON_FIELDS_HELP}")
            text = alias
        fields = text.split()
        if len(fields) not in (5, 6):
            raise _bad(f"cron {_q(expr)} has {len(fields)} field(s); {_CRON_FIELDS_HELP}")
        six = len(fields) == 6
        specs = _CRON6 if six else _CRON5
        for number, (token, spec) in enumerate(zip(fields, specs, strict=True), start=1):
            _check_cron_field(expr, number, token, spec)
        body = " ".join(fields)
        try:
            expanded, nth = _cron_expand(body, six)
        except Exception as exc:  # croniter raises assorted ValueError/TypeError subclasses
            raise self._diagnose(expr, fields, specs, six, exc) from None

        # croniter's field order: minute, hour, dom, month, dow[, second].
        minute, hour, dom, month, dow = expanded[:5]
        second = expanded[5] if six else [0]
        dom_token = fields[3 if six else 2].lower()
        simple = (
            not nth
            and not _NEAREST_WEEKDAY.search(dom_token)
            and all(v == "*" or isinstance(v, int) for values in expanded for v in values)
        )
        self._fallback: Any = None
        self._lock = threading.Lock()
        if not simple:
            self._fallback = croniter(body, datetime(2000, 1, 1), second_at_beginning=six)
        self._seconds = _int_values(second, _SECOND)
        self._minutes = _int_values(minute, _CRON5[0])
        self._hours = _int_values(hour, _CRON5[1])
        self._months = frozenset(_int_values(month, _CRON5[3]) if simple else ())
        self._doms = None if dom == ["*"] or not simple else frozenset(int(v) for v in dom)
        self._dows = None if dow == ["*"] or not simple else frozenset(int(v) for v in dow)
        self._first_time = time(self._hours[0], self._minutes[0], self._seconds[0])
        if simple and self._doms is not None and self._dows is None:
            longest = max(_MAX_MONTH_DAYS[m] for m in self._months)
            if min(self._doms) > longest:
                raise _bad(
                    f"cron {_q(expr)} never fires: day-of-month {sorted(self._doms)} never occurs "
                    f"in month(s) {sorted(self._months)}"
                )

    @staticmethod
    def _diagnose(
        expr: str, fields: list[str], specs: tuple[_FieldSpec, ...], six: bool, exc: Exception
    ) -> InvalidArgument:
        for index, (token, spec) in enumerate(zip(fields, specs, strict=True)):
            probe = ["*"] * len(fields)
            probe[index] = token
            try:
                _cron_expand(" ".join(probe), six)
            except Exception as field_exc:
                where = f"cron field {index + 1} ({spec.name}) {_q(token)}"
                reason = _croniter_reason(field_exc)
                detail = f" ({reason})" if reason else ""
                return _bad(f"{where} is not valid in {_q(expr)}{detail}; {spec.allowed()}")
        reason = _croniter_reason(exc) or type(exc).__name__
        return _bad(f"cron {_q(expr)} is not valid: {reason}; {_CRON_FIELDS_HELP}")

    def _time_at_or_after(self, hour: int, minute: int, second: int) -> time | None:
        hours, minutes, seconds = self._hours, self._minutes, self._seconds
        i = bisect.bisect_left(hours, hour)
        if i < len(hours) and hours[i] == hour:
            j = bisect.bisect_left(minutes, minute)
            if j < len(minutes) and minutes[j] == minute:
                k = bisect.bisect_left(seconds, second)
                if k < len(seconds):
                    return time(hour, minute, seconds[k])
                j += 1
            if j < len(minutes):
                return time(hour, minutes[j], seconds[0])
            i += 1
        if i < len(hours):
            return time(hours[i], minutes[0], seconds[0])
        return None

    def _day_matches(self, day: date) -> bool:
        doms, dows = self._doms, self._dows
        if dows is None:
            return doms is None or day.day in doms
        weekday = (day.weekday() + 1) % 7  # cron: 0 = Sunday
        if doms is None:
            return weekday in dows
        return day.day in doms or weekday in dows  # both restricted: either matches

    def next_wall(self, wall: datetime) -> datetime | None:
        if self._fallback is not None:
            return self._fallback_next(wall)
        start = (wall.replace(microsecond=0) if wall.microsecond else wall) + _ONE_SECOND
        day = start.date()
        at: time | None = self._time_at_or_after(start.hour, start.minute, start.second)
        if at is None:
            day += _ONE_DAY
            at = self._first_time
        last_year = min(start.year + _CRON_HORIZON_YEARS, 9999)
        months = self._months
        while day.year <= last_year:
            if day.month not in months:
                year, month = day.year, day.month
                for _ in range(12):
                    month += 1
                    if month > 12:
                        month, year = 1, year + 1
                    if month in months:
                        break
                if year > last_year:
                    return None
                day = date(year, month, 1)
                at = self._first_time
                continue
            if self._day_matches(day):
                return datetime.combine(day, at)
            day += _ONE_DAY
            at = self._first_time
        return None

    def _fallback_next(self, wall: datetime) -> datetime | None:
        # croniter computes on naive datetimes as pure wall-clock arithmetic.
        with self._lock:
            try:
                result = self._fallback.get_next(datetime, start_time=wall)
            except Exception:  # CroniterBadDateError: nothing within croniter's 50 years
                return None
        return cast(datetime, result)


# ------------------------------------------------------------------------------- rrule

_FREQS: Final = {
    "YEARLY": du_rrule.YEARLY,
    "MONTHLY": du_rrule.MONTHLY,
    "WEEKLY": du_rrule.WEEKLY,
    "DAILY": du_rrule.DAILY,
    "HOURLY": du_rrule.HOURLY,
    "MINUTELY": du_rrule.MINUTELY,
    "SECONDLY": du_rrule.SECONDLY,
}
_WEEKDAYS: Final = {"MO": 0, "TU": 1, "WE": 2, "TH": 3, "FR": 4, "SA": 5, "SU": 6}
# part -> (dateutil keyword, low, high, negatives allowed)
_BY_NUMBERS: Final = {
    "BYSECOND": ("bysecond", 0, 59, False),
    "BYMINUTE": ("byminute", 0, 59, False),
    "BYHOUR": ("byhour", 0, 23, False),
    "BYMONTH": ("bymonth", 1, 12, False),
    "BYMONTHDAY": ("bymonthday", 1, 31, True),
    "BYYEARDAY": ("byyearday", 1, 366, True),
    "BYWEEKNO": ("byweekno", 1, 53, True),
    "BYSETPOS": ("bysetpos", 1, 366, True),
}
_RULE_PARTS: Final = ("FREQ", "INTERVAL", "COUNT", "UNTIL", "WKST", "BYDAY", *_BY_NUMBERS)
_RRULE_HELP: Final = (
    "e.g. 'FREQ=WEEKLY;BYDAY=MO,WE;BYHOUR=8;BYMINUTE=30;BYSECOND=0', optionally preceded by a "
    "'DTSTART;TZID=Europe/Chisinau:20260101T083000' line"
)
_PROPERTY_LINE = re.compile(r"(DTSTART|RRULE|EXRULE|RDATE|EXDATE)((?:;[^:]*)?):(.*)", re.IGNORECASE | re.DOTALL)
_ICAL_DATETIME = re.compile(r"(\d{4})(\d{2})(\d{2})(?:T(\d{2})(\d{2})(\d{2})?(Z)?)?", re.IGNORECASE | re.ASCII)
_BYDAY_ITEM = re.compile(r"([+-]?\d{1,2})?(MO|TU|WE|TH|FR|SA|SU)", re.ASCII)
_SIGNED_INT = re.compile(r"[+-]?\d{1,4}", re.ASCII)
_POSITIVE_INT = re.compile(r"\d{1,9}", re.ASCII)


@dataclass(frozen=True)
class _IcalTime:
    wall: datetime  # naive, as written
    utc: bool
    date_only: bool


def _parse_ical_time(what: str, value: str, expr: str) -> _IcalTime:
    text = value.strip().replace("-", "").replace(":", "")
    match = _ICAL_DATETIME.fullmatch(text)
    if match is None:
        raise _bad(
            f"rrule {what} {_q(value)} is not a date-time; use 'YYYYMMDDTHHMMSS' (local), "
            f"'YYYYMMDDTHHMMSSZ' (UTC) or 'YYYYMMDD' (in {_q(expr)})"
        )
    year, month, day, hour, minute, second, zulu = match.groups()
    try:
        wall = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError as exc:
        raise _bad(f"rrule {what} {_q(value)} is not a valid date-time ({exc}) in {_q(expr)}") from None
    return _IcalTime(wall, zulu is not None, hour is None)


def _split_params(what: str, params: str, expr: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in params.split(";"):
        if not item.strip():
            continue
        key, eq, val = item.partition("=")
        if not eq or not val.strip():
            raise _bad(f"rrule {what} parameter {_q(item)} is not KEY=VALUE in {_q(expr)}")
        result[key.strip().upper()] = val.strip()
    unknown = set(result) - {"TZID", "VALUE"}
    if unknown:
        raise _bad(f"rrule {what} parameter(s) {sorted(unknown)} not supported in {_q(expr)}; only TZID and VALUE")
    if result.get("VALUE", "DATE-TIME").upper() not in ("DATE", "DATE-TIME"):
        raise _bad(f"rrule {what} VALUE={result['VALUE']} not supported in {_q(expr)}; use DATE or DATE-TIME")
    return result


def _param_zone(what: str, params: dict[str, str], expr: str) -> ZoneInfo | None:
    name = params.get("TZID")
    if name is None:
        return None
    try:
        return load_timezone(name)
    except InvalidArgument as exc:
        raise _bad(f"rrule {what} TZID: {exc.message} (in {_q(expr)})") from None


def _to_eval_wall(stamp: _IcalTime, zone: ZoneInfo | None, eval_tz: ZoneInfo) -> datetime:
    """Read an RDATE/EXDATE/UNTIL value as a naive wall time in the evaluation zone."""
    if stamp.utc:
        return stamp.wall.replace(tzinfo=UTC).astimezone(eval_tz).replace(tzinfo=None)
    if zone is not None and zone is not eval_tz and zone.key != eval_tz.key:
        return _wall_to_utc(stamp.wall, zone).astimezone(eval_tz).replace(tzinfo=None)
    return stamp.wall


def _parse_int(part: str, value: str, expr: str, *, low: int = 1) -> int:
    if not _POSITIVE_INT.fullmatch(value) or int(value) < low:
        raise _bad(f"rrule {part}={value} must be an integer >= {low} (in {_q(expr)})")
    return int(value)


def _rule_kwargs(value: str, eval_tz: ZoneInfo, expr: str) -> dict[str, Any]:
    parts: dict[str, str] = {}
    for raw in value.strip().strip(";").split(";"):
        key, eq, val = raw.partition("=")
        key, val = key.strip().upper(), val.strip().upper()
        if not eq or not key or not val:
            raise _bad(f"rrule part {_q(raw)} is not KEY=VALUE in {_q(expr)}; {_RRULE_HELP}")
        if key not in _RULE_PARTS:
            raise _bad(f"rrule part {_q(key)} is not supported in {_q(expr)}; allowed: {', '.join(_RULE_PARTS)}")
        if key in parts:
            raise _bad(f"rrule part {key} is given twice in {_q(expr)}")
        parts[key] = val
    if "FREQ" not in parts:
        raise _bad(f"rrule {_q(expr)} has no FREQ; {_RRULE_HELP}")
    freq_name = parts["FREQ"]
    if freq_name not in _FREQS:
        raise _bad(f"rrule FREQ={freq_name} is not one of {', '.join(_FREQS)} (in {_q(expr)})")
    kwargs: dict[str, Any] = {"freq": _FREQS[freq_name]}
    if "COUNT" in parts and "UNTIL" in parts:
        raise _bad(f"rrule {_q(expr)} has both COUNT and UNTIL; RFC 5545 allows only one of them")
    if "INTERVAL" in parts:
        kwargs["interval"] = _parse_int("INTERVAL", parts["INTERVAL"], expr)
    if "COUNT" in parts:
        kwargs["count"] = _parse_int("COUNT", parts["COUNT"], expr)
        if kwargs["count"] > MAX_RRULE_COUNT:
            raise _bad(
                f"rrule COUNT={kwargs['count']} is above {MAX_RRULE_COUNT} (in {_q(expr)}); "
                "for a longer series use UNTIL or leave COUNT out"
            )
    if "UNTIL" in parts:
        until = _parse_ical_time("UNTIL", parts["UNTIL"], expr)
        if until.date_only:  # a date means "through the end of that day"
            until = _IcalTime(until.wall.replace(hour=23, minute=59, second=59), until.utc, True)
        kwargs["until"] = _to_eval_wall(until, None, eval_tz)
    if "WKST" in parts:
        if parts["WKST"] not in _WEEKDAYS:
            raise _bad(f"rrule WKST={parts['WKST']} must be one of {', '.join(_WEEKDAYS)} (in {_q(expr)})")
        kwargs["wkst"] = _WEEKDAYS[parts["WKST"]]
    if "BYDAY" in parts:
        kwargs["byweekday"] = _parse_byday(parts["BYDAY"], freq_name, expr)
    for part, (keyword, low, high, signed) in _BY_NUMBERS.items():
        if part in parts:
            kwargs[keyword] = _parse_by_numbers(part, parts[part], low, high, signed, expr)
    _check_rfc_combinations(parts, freq_name, expr)
    _check_never_fires(kwargs, freq_name, expr)
    return kwargs


def _parse_byday(value: str, freq_name: str, expr: str) -> tuple[Any, ...]:
    days: list[Any] = []
    for item in value.split(","):
        match = _BYDAY_ITEM.fullmatch(item.strip())
        if match is None:
            raise _bad(
                f"rrule BYDAY item {_q(item)} is not valid in {_q(expr)}; use MO,TU,WE,TH,FR,SA,SU, "
                "optionally with an ordinal such as 1MO (first Monday) or -1FR (last Friday)"
            )
        ordinal, name = match.groups()
        n = int(ordinal) if ordinal else None
        if n is not None:
            if n == 0 or abs(n) > 53:
                raise _bad(f"rrule BYDAY ordinal in {_q(item)} must be 1..53 or -53..-1 (in {_q(expr)})")
            if freq_name not in ("MONTHLY", "YEARLY"):
                raise _bad(
                    f"rrule BYDAY {_q(item)} has an ordinal, which needs FREQ=MONTHLY or FREQ=YEARLY "
                    f"(in {_q(expr)}); drop the number or change FREQ"
                )
        days.append(du_rrule.weekday(_WEEKDAYS[name], n))
    return tuple(days)


def _parse_by_numbers(part: str, value: str, low: int, high: int, signed: bool, expr: str) -> tuple[int, ...]:
    allowed = f"{low}..{high}" + (f" or -{high}..-{low}" if signed else "")
    numbers: list[int] = []
    for item in value.split(","):
        text = item.strip()
        if not _SIGNED_INT.fullmatch(text):
            raise _bad(f"rrule {part} value {_q(text)} is not an integer; {part} must be {allowed} (in {_q(expr)})")
        number = int(text)
        if not (low <= number <= high or (signed and -high <= number <= -low)):
            raise _bad(f"rrule {part}={text} is out of range; {part} must be {allowed} (in {_q(expr)})")
        numbers.append(number)
    return tuple(numbers)


def _check_rfc_combinations(parts: dict[str, str], freq_name: str, expr: str) -> None:
    if "BYWEEKNO" in parts and freq_name != "YEARLY":
        raise _bad(f"rrule BYWEEKNO needs FREQ=YEARLY (in {_q(expr)})")
    if "BYYEARDAY" in parts and freq_name in ("DAILY", "WEEKLY", "MONTHLY"):
        raise _bad(f"rrule BYYEARDAY cannot be used with FREQ={freq_name} (in {_q(expr)})")
    if "BYMONTHDAY" in parts and freq_name == "WEEKLY":
        raise _bad(f"rrule BYMONTHDAY cannot be used with FREQ=WEEKLY (in {_q(expr)}); use BYDAY")
    if "BYSETPOS" in parts and not any(p.startswith("BY") and p != "BYSETPOS" for p in parts):
        raise _bad(f"rrule BYSETPOS needs another BY... part to select from (in {_q(expr)})")


def _check_never_fires(kwargs: dict[str, Any], freq_name: str, expr: str) -> None:
    """Reject the impossible combinations dateutil would search for until year 9999."""
    monthdays: tuple[int, ...] = kwargs.get("bymonthday", ())
    if monthdays:
        months: tuple[int, ...] = kwargs.get("bymonth") or tuple(range(1, 13))
        longest = max(_MAX_MONTH_DAYS[m] for m in months)
        if all(abs(d) > longest for d in monthdays):
            raise _bad(
                f"rrule {_q(expr)} never fires: BYMONTHDAY {list(monthdays)} never occurs in month(s) {list(months)}"
            )
    ordinals = [d.n for d in kwargs.get("byweekday", ()) if d.n is not None]
    if freq_name == "MONTHLY" and ordinals and all(abs(n) > 5 for n in ordinals):
        raise _bad(f"rrule {_q(expr)} never fires: a month has at most 5 of each weekday")


@dataclass(frozen=True)
class _Window:
    """The first `_Cursor.WINDOW` occurrences of a copy of the rule starting at `start`."""

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


class _Cursor:
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


class _RRuleRule(_WallRule):
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
        self._rules = [_Cursor(r) for r in rules]
        self._exrules = [_Cursor(r) for r in exrules]
        self._rdates = tuple(sorted(set(rdates)))
        self._exdates = frozenset(exdates)
        self._exdays = frozenset(exdays)

    def next_wall(self, wall: datetime) -> datetime | None:
        cursor = wall
        for _ in range(_ITERATION_CAP):
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


def _parse_rrule(expr: str, task_tz: ZoneInfo, anchor: datetime | None) -> _RRuleRule:
    text = expr.replace("\\n", "\n").strip()
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    if not lines:
        raise _bad(f"rrule expression is empty; {_RRULE_HELP}")
    dtstart_lines: list[tuple[str, str]] = []
    other: list[tuple[str, str, str]] = []
    for line in lines:
        match = _PROPERTY_LINE.fullmatch(line)
        if match is not None:
            name, params, value = match.group(1).upper(), match.group(2), match.group(3)
            if name == "DTSTART":
                dtstart_lines.append((params, value))
            else:
                other.append((name, params, value))
        elif "=" in line and ":" not in line.split("=", 1)[0]:
            other.append(("RRULE", "", line))
        else:
            raise _bad(
                f"rrule line {_q(line)} is not understood in {_q(expr)}; expected DTSTART:..., RRULE:..., "
                f"RDATE:..., EXDATE:... or a bare rule; {_RRULE_HELP}"
            )
    if len(dtstart_lines) > 1:
        raise _bad(f"rrule {_q(expr)} has more than one DTSTART line")

    eval_tz = task_tz
    if dtstart_lines:
        params_text, value = dtstart_lines[0]
        params = _split_params("DTSTART", params_text, expr)
        zone = _param_zone("DTSTART", params, expr)
        stamp = _parse_ical_time("DTSTART", value, expr)
        if stamp.utc and zone is not None:
            raise _bad(f"rrule DTSTART {_q(value)} ends in Z but also has TZID (in {_q(expr)}); use one")
        if zone is not None:
            eval_tz = zone  # RFC 5545: the recurrence is evaluated in DTSTART's zone
        dtstart = _to_eval_wall(stamp, None, eval_tz)
    else:
        if anchor is None:  # pragma: no cover - parse_schedule always supplies it
            raise ValueError("an rrule without DTSTART needs an anchor")
        dtstart = anchor.astimezone(task_tz).replace(tzinfo=None, microsecond=0)

    rules: list[Any] = []
    exrules: list[Any] = []
    rdates: list[datetime] = []
    exdates: list[datetime] = []
    exdays: list[date] = []
    for name, params_text, value in other:
        if name in ("RRULE", "EXRULE"):
            if params_text.strip(";").strip():
                raise _bad(f"rrule {name} takes no parameters (in {_q(expr)})")
            kwargs = _rule_kwargs(value, eval_tz, expr)
            try:
                built = du_rrule.rrule(dtstart=dtstart, **kwargs)
            except ValueError as exc:
                if "empty set" in str(exc):
                    raise _bad(
                        f"rrule {_q(value)} never fires: counting by INTERVAL from DTSTART "
                        f"({dtstart.isoformat()}) never reaches its BYHOUR/BYMINUTE/BYSECOND values"
                    ) from None
                raise _bad(f"rrule {_q(value)} is not valid: {exc} (in {_q(expr)})") from None
            (rules if name == "RRULE" else exrules).append(built)
            continue
        params = _split_params(name, params_text, expr)
        zone = _param_zone(name, params, expr)
        for item in value.split(","):
            stamp = _parse_ical_time(name, item, expr)
            if name == "EXDATE" and stamp.date_only:
                exdays.append(stamp.wall.date())
                continue
            if stamp.date_only:  # a date-only RDATE fires at DTSTART's time of day
                stamp = _IcalTime(datetime.combine(stamp.wall.date(), dtstart.time()), False, True)
            (rdates if name == "RDATE" else exdates).append(_to_eval_wall(stamp, zone, eval_tz))
    if not rules and not rdates:
        raise _bad(f"rrule {_q(expr)} has no RRULE or RDATE; {_RRULE_HELP}")
    return _RRuleRule(eval_tz, rules, exrules, rdates, exdates, exdays)


# -------------------------------------------------------------------- once/event/condition


def _parse_once(expr: str, tz: ZoneInfo) -> _OnceRule:
    text = expr.strip()
    hint = (
        "use an ISO 8601 date-time with offset, e.g. '2026-12-01T08:30:00+02:00' or "
        "'2026-12-01T06:30:00Z', or a local date-time such as '2026-12-01T08:30' (read in the task timezone)"
    )
    if re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", text, re.ASCII):
        raise _bad(f"once {_q(expr)} has no time of day; {hint}")
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise _bad(f"once {_q(expr)} is not an ISO 8601 date-time; {hint}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)  # fold=0: same DST rule as cron and rrule
    return _OnceRule(parsed.astimezone(UTC))


_EVENT_PATTERN = re.compile(r"[A-Za-z0-9_.:*>-]+", re.ASCII)


def _parse_event(expr: str) -> _NeverRule:
    text = expr.strip()
    hint = "e.g. 'orders.created' or 'orders.*'; allowed characters: letters, digits and _ . : * > -"
    if not text:
        raise _bad(f"event topic pattern is empty; {hint}")
    if len(text) > MAX_EVENT_PATTERN_LEN:
        raise _bad(f"event topic pattern {_q(text, 60)} is longer than {MAX_EVENT_PATTERN_LEN} characters")
    if not _EVENT_PATTERN.fullmatch(text):
        bad = sorted({c for c in text if not _EVENT_PATTERN.fullmatch(c)})
        raise _bad(f"event topic pattern {_q(text)} contains {''.join(bad)!r}; {hint}")
    if "" in text.split("."):
        raise _bad(f"event topic pattern {_q(text)} has an empty segment between dots; {hint}")
    return _NeverRule()


_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.ASCII,
)
_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)


def _parse_condition(expr: str) -> _IntervalRule:
    text = expr.strip().upper()
    hint = (
        "give the poll interval as seconds ('30') or an ISO 8601 duration ('PT30S', 'PT5M', 'PT1H', 'P1D'); "
        f"minimum 1 second, maximum {MAX_CONDITION_INTERVAL.days} days"
    )
    interval: timedelta | None = None
    if _SECONDS.fullmatch(text):
        interval = timedelta(seconds=min(float(text), 1e10))
    else:
        match = _ISO_DURATION.fullmatch(text)
        if match is not None and text not in ("P", "PT") and not text.endswith("T"):
            values = {k: min(float(v), 1e10) if v else 0.0 for k, v in match.groupdict().items()}
            total = values["w"] * 604800 + values["d"] * 86400 + values["h"] * 3600 + values["m"] * 60 + values["s"]
            interval = timedelta(seconds=min(total, 1e10))
    if interval is None:
        extra = " (years and months are not allowed; use days)" if re.fullmatch(r"P.*[YM].*", text) else ""
        raise _bad(f"condition interval {_q(expr)} is not valid{extra}; {hint}")
    if interval < MIN_CONDITION_INTERVAL:
        raise _bad(f"condition interval {_q(expr)} is shorter than 1 second; {hint}")
    if interval > MAX_CONDITION_INTERVAL:
        raise _bad(f"condition interval {_q(expr)} is longer than {MAX_CONDITION_INTERVAL.days} days; {hint}")
    return _IntervalRule(interval)


# ---------------------------------------------------------------------------- schedule


@dataclass(frozen=True, eq=False)
class Schedule:
    """A parsed, validated schedule. Shared between tasks through the parse cache, so it
    is immutable apart from private memo/checkpoint caches."""

    kind: ScheduleKind
    expr: str
    tz: ZoneInfo
    _rule: _Rule = field(repr=False)
    # One slot holding the last (after, next) pair: thousands of tasks share a schedule
    # and ask for the same `after`. Replaced whole, so concurrent readers see a pair.
    _memo: list[tuple[datetime, datetime | None] | None] = field(default_factory=lambda: [None], repr=False)

    @property
    def is_time_based(self) -> bool:
        return self.kind in TIME_KINDS

    @property
    def interval(self) -> timedelta | None:
        """The poll interval of a `condition` schedule, else None."""
        return self._rule.interval if isinstance(self._rule, _IntervalRule) else None

    def next_after(self, after: datetime) -> datetime | None:
        """The first fire strictly after `after` (tz-aware UTC), or None when exhausted."""
        _require_aware(after, "after")
        last = self._memo[0]
        if last is not None and last[0] == after:
            return last[1]
        try:
            result = self._rule.next_after(after)
        except OverflowError:  # near datetime.max
            result = None
        self._memo[0] = (after, result)
        return result

    def upcoming(self, after: datetime, count: int) -> list[datetime]:
        """Up to `count` successive fires strictly after `after` (fewer when exhausted)."""
        fires: list[datetime] = []
        cursor = after
        for _ in range(max(count, 0)):
            fire = self.next_after(cursor)
            if fire is None:
                break
            fires.append(fire)
            cursor = fire
        return fires


def _check_kind(kind: str) -> ScheduleKind:
    if kind not in SCHEDULE_KINDS:
        raise InvalidArgument(
            "schedule_kind", f"unknown schedule kind {kind!r}; use one of cron, rrule, once, event, condition"
        )
    return cast(ScheduleKind, kind)


def parse_schedule(kind: str, expr: str, timezone: str, *, anchor: datetime) -> Schedule:
    """Parse and syntax-check a schedule (cached); raise InvalidArgument on bad input.

    `anchor` (tz-aware) is the task's creation instant: an rrule without DTSTART starts at
    the anchor's wall time in the task zone (microseconds dropped), so COUNT is stable.
    """
    _require_aware(anchor, "anchor")
    checked = _check_kind(kind)
    if not isinstance(expr, str):
        raise _bad(f"schedule_expr must be a string, got {type(expr).__name__}")
    if len(expr) > MAX_EXPR_LEN:
        raise _bad(f"schedule_expr {_q(expr, 60)} is {len(expr)} characters long; at most {MAX_EXPR_LEN}")
    key_anchor: datetime | None = None
    if checked == "rrule" and "DTSTART" not in expr.upper():
        key_anchor = anchor.astimezone(UTC).replace(microsecond=0)
    return _parse_cached(checked, expr, timezone, key_anchor)


@functools.lru_cache(maxsize=4096)
def _parse_cached(kind: ScheduleKind, expr: str, timezone: str, anchor: datetime | None) -> Schedule:
    tz = load_timezone(timezone)
    builders: dict[str, Callable[[], _Rule]] = {
        "cron": lambda: _CronRule(expr, tz),
        "rrule": lambda: _parse_rrule(expr, tz, anchor),
        "once": lambda: _parse_once(expr, tz),
        "event": lambda: _parse_event(expr),
        "condition": lambda: _parse_condition(expr),
    }
    return Schedule(kind, expr, tz, builders[kind]())


def validate_schedule(kind: str, expr: str, timezone: str, *, now: datetime, anchor: datetime) -> Schedule:
    """parse_schedule, plus: a time-based schedule must fire at least once strictly after `now`."""
    _require_aware(now, "now")
    schedule = parse_schedule(kind, expr, timezone, anchor=anchor)
    if schedule.kind not in TIME_KINDS or schedule.next_after(now) is not None:
        return schedule
    now_local = format_local(now, schedule.tz)
    if isinstance(schedule._rule, _OnceRule):
        when = format_local(schedule._rule.instant, schedule.tz)
        raise _bad(
            f"once {_q(expr)} is in the past (it is {when}; now is {now_local} in {schedule.tz.key}); "
            "give a future instant"
        )
    if schedule.kind == "cron":
        reason = "no date matches its day-of-month/month/day-of-week fields"
    else:
        reason = "its COUNT/UNTIL is already exhausted or no date matches all of its parts"
    raise _bad(f"{schedule.kind} {_q(expr)} never fires after now ({now_local}): {reason}")


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
    _require_aware(now, "now")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= MAX_PREVIEW:
        raise InvalidArgument("count", f"count {count!r} must be an integer from 1 to {MAX_PREVIEW}")
    if after is None:
        after = now
    elif not isinstance(after, datetime) or after.tzinfo is None or after.utcoffset() is None:
        raise InvalidArgument(
            "after",
            f"after {_q(str(after))} has no UTC offset; give an ISO 8601 instant with offset, "
            "e.g. '2026-03-29T08:00:00+03:00' or '2026-03-29T05:00:00Z'",
        )
    schedule = parse_schedule(kind, expr, timezone, anchor=anchor if anchor is not None else now)
    return schedule.upcoming(after, count)
