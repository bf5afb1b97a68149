"""RFC 5545 recurrence text: parse DTSTART/RRULE/EXRULE/RDATE/EXDATE lines into a rule set."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, time
from typing import Any, Final
from zoneinfo import ZoneInfo

from dateutil import rrule as du_rrule

from pao_orchestrator.engine.schedule.errors import invalid, quote
from pao_orchestrator.engine.schedule.rrule_sets import Cursor, RRuleRule
from pao_orchestrator.engine.schedule.timezones import load_timezone
from pao_orchestrator.engine.schedule.wallclock import ITERATION_CAP, MAX_MONTH_DAYS, start_wall, wall_to_utc
from pao_orchestrator.errors import InvalidArgument

# Bounds the walk from DTSTART that a COUNT rule needs (COUNT cannot be fast-forwarded).
MAX_RRULE_COUNT: Final = 100_000


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
        raise invalid(
            f"rrule {what} {quote(value)} is not a date-time; use 'YYYYMMDDTHHMMSS' (local), "
            f"'YYYYMMDDTHHMMSSZ' (UTC) or 'YYYYMMDD' (in {quote(expr)})"
        )
    year, month, day, hour, minute, second, zulu = match.groups()
    try:
        wall = datetime(int(year), int(month), int(day), int(hour or 0), int(minute or 0), int(second or 0))
    except ValueError as exc:
        raise invalid(f"rrule {what} {quote(value)} is not a valid date-time ({exc}) in {quote(expr)}") from None
    return _IcalTime(wall, zulu is not None, hour is None)


def _split_params(what: str, params: str, expr: str) -> dict[str, str]:
    result: dict[str, str] = {}
    for item in params.split(";"):
        if not item.strip():
            continue
        key, eq, val = item.partition("=")
        if not eq or not val.strip():
            raise invalid(f"rrule {what} parameter {quote(item)} is not KEY=VALUE in {quote(expr)}")
        result[key.strip().upper()] = val.strip()
    unknown = set(result) - {"TZID", "VALUE"}
    if unknown:
        raise invalid(
            f"rrule {what} parameter(s) {sorted(unknown)} not supported in {quote(expr)}; only TZID and VALUE"
        )
    if result.get("VALUE", "DATE-TIME").upper() not in ("DATE", "DATE-TIME"):
        raise invalid(f"rrule {what} VALUE={result['VALUE']} not supported in {quote(expr)}; use DATE or DATE-TIME")
    return result


def _param_zone(what: str, params: dict[str, str], expr: str) -> ZoneInfo | None:
    name = params.get("TZID")
    if name is None:
        return None
    try:
        return load_timezone(name)
    except InvalidArgument as exc:
        raise invalid(f"rrule {what} TZID: {exc.message} (in {quote(expr)})") from None


def _to_eval_wall(stamp: _IcalTime, zone: ZoneInfo | None, eval_tz: ZoneInfo) -> datetime:
    """Read an RDATE/EXDATE/UNTIL value as a naive wall time in the evaluation zone."""
    if stamp.utc:
        return stamp.wall.replace(tzinfo=UTC).astimezone(eval_tz).replace(tzinfo=None)
    if zone is not None and zone is not eval_tz and zone.key != eval_tz.key:
        return wall_to_utc(stamp.wall, zone).astimezone(eval_tz).replace(tzinfo=None)
    return stamp.wall


def _parse_int(part: str, value: str, expr: str, *, low: int = 1) -> int:
    if not _POSITIVE_INT.fullmatch(value) or int(value) < low:
        raise invalid(f"rrule {part}={value} must be an integer >= {low} (in {quote(expr)})")
    return int(value)


def _rule_kwargs(value: str, eval_tz: ZoneInfo, expr: str) -> dict[str, Any]:
    parts: dict[str, str] = {}
    for raw in value.strip().strip(";").split(";"):
        key, eq, val = raw.partition("=")
        key, val = key.strip().upper(), val.strip().upper()
        if not eq or not key or not val:
            raise invalid(f"rrule part {quote(raw)} is not KEY=VALUE in {quote(expr)}; {_RRULE_HELP}")
        if key not in _RULE_PARTS:
            raise invalid(
                f"rrule part {quote(key)} is not supported in {quote(expr)}; allowed: {', '.join(_RULE_PARTS)}"
            )
        if key in parts:
            raise invalid(f"rrule part {key} is given twice in {quote(expr)}")
        parts[key] = val
    if "FREQ" not in parts:
        raise invalid(f"rrule {quote(expr)} has no FREQ; {_RRULE_HELP}")
    freq_name = parts["FREQ"]
    if freq_name not in _FREQS:
        raise invalid(f"rrule FREQ={freq_name} is not one of {', '.join(_FREQS)} (in {quote(expr)})")
    kwargs: dict[str, Any] = {"freq": _FREQS[freq_name]}
    if "COUNT" in parts and "UNTIL" in parts:
        raise invalid(f"rrule {quote(expr)} has both COUNT and UNTIL; RFC 5545 allows only one of them")
    if "INTERVAL" in parts:
        kwargs["interval"] = _parse_int("INTERVAL", parts["INTERVAL"], expr)
    if "COUNT" in parts:
        kwargs["count"] = _parse_int("COUNT", parts["COUNT"], expr)
        if kwargs["count"] > MAX_RRULE_COUNT:
            raise invalid(
                f"rrule COUNT={kwargs['count']} is above {MAX_RRULE_COUNT} (in {quote(expr)}); "
                "for a longer series use UNTIL or leave COUNT out"
            )
    if "UNTIL" in parts:
        until = _parse_ical_time("UNTIL", parts["UNTIL"], expr)
        if until.date_only:  # a date means "through the end of that day"
            until = _IcalTime(until.wall.replace(hour=23, minute=59, second=59), until.utc, True)
        kwargs["until"] = _to_eval_wall(until, None, eval_tz)
    if "WKST" in parts:
        if parts["WKST"] not in _WEEKDAYS:
            raise invalid(f"rrule WKST={parts['WKST']} must be one of {', '.join(_WEEKDAYS)} (in {quote(expr)})")
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
            raise invalid(
                f"rrule BYDAY item {quote(item)} is not valid in {quote(expr)}; use MO,TU,WE,TH,FR,SA,SU, "
                "optionally with an ordinal such as 1MO (first Monday) or -1FR (last Friday)"
            )
        ordinal, name = match.groups()
        n = int(ordinal) if ordinal else None
        if n is not None:
            if n == 0 or abs(n) > 53:
                raise invalid(f"rrule BYDAY ordinal in {quote(item)} must be 1..53 or -53..-1 (in {quote(expr)})")
            if freq_name not in ("MONTHLY", "YEARLY"):
                raise invalid(
                    f"rrule BYDAY {quote(item)} has an ordinal, which needs FREQ=MONTHLY or FREQ=YEARLY "
                    f"(in {quote(expr)}); drop the number or change FREQ"
                )
        days.append(du_rrule.weekday(_WEEKDAYS[name], n))
    return tuple(days)


def _parse_by_numbers(part: str, value: str, low: int, high: int, signed: bool, expr: str) -> tuple[int, ...]:
    allowed = f"{low}..{high}" + (f" or -{high}..-{low}" if signed else "")
    numbers: list[int] = []
    for item in value.split(","):
        text = item.strip()
        if not _SIGNED_INT.fullmatch(text):
            raise invalid(
                f"rrule {part} value {quote(text)} is not an integer; {part} must be {allowed} (in {quote(expr)})"
            )
        number = int(text)
        if not (low <= number <= high or (signed and -high <= number <= -low)):
            raise invalid(f"rrule {part}={text} is out of range; {part} must be {allowed} (in {quote(expr)})")
        numbers.append(number)
    return tuple(numbers)


def _check_rfc_combinations(parts: dict[str, str], freq_name: str, expr: str) -> None:
    if "BYWEEKNO" in parts and freq_name != "YEARLY":
        raise invalid(f"rrule BYWEEKNO needs FREQ=YEARLY (in {quote(expr)})")
    if "BYYEARDAY" in parts and freq_name in ("DAILY", "WEEKLY", "MONTHLY"):
        raise invalid(f"rrule BYYEARDAY cannot be used with FREQ={freq_name} (in {quote(expr)})")
    if "BYMONTHDAY" in parts and freq_name == "WEEKLY":
        raise invalid(f"rrule BYMONTHDAY cannot be used with FREQ=WEEKLY (in {quote(expr)}); use BYDAY")
    if "BYSETPOS" in parts and not any(p.startswith("BY") and p != "BYSETPOS" for p in parts):
        raise invalid(f"rrule BYSETPOS needs another BY... part to select from (in {quote(expr)})")


def _check_never_fires(kwargs: dict[str, Any], freq_name: str, expr: str) -> None:
    """Reject the impossible combinations dateutil would search for until year 9999."""
    monthdays: tuple[int, ...] = kwargs.get("bymonthday", ())
    if monthdays:
        months: tuple[int, ...] = kwargs.get("bymonth") or tuple(range(1, 13))
        longest = max(MAX_MONTH_DAYS[m] for m in months)
        if all(abs(d) > longest for d in monthdays):
            raise invalid(
                f"rrule {quote(expr)} never fires: BYMONTHDAY {list(monthdays)} never occurs in month(s) {list(months)}"
            )
    ordinals = [d.n for d in kwargs.get("byweekday", ()) if d.n is not None]
    if freq_name == "MONTHLY" and ordinals and all(abs(n) > 5 for n in ordinals):
        raise invalid(f"rrule {quote(expr)} never fires: a month has at most 5 of each weekday")


def _count_after(rule: Any, anchor: datetime, tz: ZoneInfo) -> Any:
    """`rule` (a COUNT rule from midnight) with its COUNT counted from the first occurrence after `anchor`.

    A rule without DTSTART starts at midnight of its creation day; the occurrences of
    that day already past at creation must not use up COUNT ("COUNT=3" fires three
    times). Re-anchoring on an occurrence keeps the phase and every default dateutil
    derives from DTSTART (see `Cursor`), so only the past occurrences are dropped.
    """
    count = rule._count
    cursor = Cursor(rule.replace(count=None))
    wall: datetime | None = start_wall(anchor, tz)
    for _ in range(ITERATION_CAP):
        assert wall is not None
        wall = cursor.after(wall)
        if wall is None:
            return rule  # no occurrence after the anchor at all
        if wall_to_utc(wall, tz) > anchor:  # compared as instants: a DST fold repeats wall times
            return rule.replace(dtstart=wall, count=count)
    return rule


def parse_rrule(expr: str, task_tz: ZoneInfo, anchor: datetime | None) -> RRuleRule:
    """Parse rrule text. Without DTSTART the rule starts at midnight of `anchor`'s day in
    `task_tz` (fields the rule leaves out are 0), and COUNT counts occurrences strictly
    after `anchor` (the task's creation)."""
    text = expr.replace("\\n", "\n").strip()
    lines = [line.strip() for line in re.split(r"[\r\n]+", text) if line.strip()]
    if not lines:
        raise invalid(f"rrule expression is empty; {_RRULE_HELP}")
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
            raise invalid(
                f"rrule line {quote(line)} is not understood in {quote(expr)}; expected DTSTART:..., RRULE:..., "
                f"RDATE:..., EXDATE:... or a bare rule; {_RRULE_HELP}"
            )
    if len(dtstart_lines) > 1:
        raise invalid(f"rrule {quote(expr)} has more than one DTSTART line")

    eval_tz = task_tz
    if dtstart_lines:
        params_text, value = dtstart_lines[0]
        params = _split_params("DTSTART", params_text, expr)
        zone = _param_zone("DTSTART", params, expr)
        stamp = _parse_ical_time("DTSTART", value, expr)
        if stamp.utc and zone is not None:
            raise invalid(f"rrule DTSTART {quote(value)} ends in Z but also has TZID (in {quote(expr)}); use one")
        if zone is not None:
            eval_tz = zone  # RFC 5545: the recurrence is evaluated in DTSTART's zone
        dtstart = _to_eval_wall(stamp, None, eval_tz)
    else:
        if anchor is None:  # pragma: no cover - parse_schedule always supplies it
            raise ValueError("an rrule without DTSTART needs an anchor")
        # Midnight, not the anchor's wall time: minutes and seconds the rule does not give are 0, so
        # a preview and the task created from it fire at the same instants.
        dtstart = datetime.combine(anchor.astimezone(task_tz).date(), time())

    rules: list[Any] = []
    exrules: list[Any] = []
    rdates: list[datetime] = []
    exdates: list[datetime] = []
    exdays: list[date] = []
    for name, params_text, value in other:
        if name in ("RRULE", "EXRULE"):
            if params_text.strip(";").strip():
                raise invalid(f"rrule {name} takes no parameters (in {quote(expr)})")
            kwargs = _rule_kwargs(value, eval_tz, expr)
            try:
                built = du_rrule.rrule(dtstart=dtstart, **kwargs)
            except ValueError as exc:
                if "empty set" in str(exc):
                    raise invalid(
                        f"rrule {quote(value)} never fires: counting by INTERVAL from DTSTART "
                        f"({dtstart.isoformat()}) never reaches its BYHOUR/BYMINUTE/BYSECOND values"
                    ) from None
                raise invalid(f"rrule {quote(value)} is not valid: {exc} (in {quote(expr)})") from None
            if anchor is not None and not dtstart_lines and built._count is not None:
                built = _count_after(built, anchor, eval_tz)
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
        raise invalid(f"rrule {quote(expr)} has no RRULE or RDATE; {_RRULE_HELP}")
    return RRuleRule(eval_tz, rules, exrules, rdates, exdates, exdays)
