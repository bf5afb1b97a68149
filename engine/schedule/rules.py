"""How a schedule computes its next fire, and the clock-free kinds: once, event, condition."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final
from zoneinfo import ZoneInfo

from pao_orchestrator.engine.schedule.errors import invalid, quote

# No fire is scheduled at or after this instant. asyncpg writes datetime.max as 'infinity', and
# instants near it overflow as soon as anything is added to them.
LATEST: Final = datetime(9999, 1, 1, tzinfo=UTC)
MIN_CONDITION_INTERVAL: Final = timedelta(seconds=1)
MAX_CONDITION_INTERVAL: Final = timedelta(days=365)
MAX_EVENT_PATTERN_LEN: Final = 256


class Rule:
    """How one schedule computes its next fire; `after` is always tz-aware UTC."""

    def next_after(self, after: datetime) -> datetime | None:
        raise NotImplementedError


class NeverRule(Rule):
    """`event` schedules: fired by published events, never by the clock."""

    def next_after(self, after: datetime) -> datetime | None:
        return None


@dataclass(frozen=True)
class OnceRule(Rule):
    instant: datetime  # UTC

    def next_after(self, after: datetime) -> datetime | None:
        return self.instant if self.instant > after else None


@dataclass(frozen=True)
class IntervalRule(Rule):
    interval: timedelta

    def next_after(self, after: datetime) -> datetime | None:
        return (after + self.interval).astimezone(UTC)


def parse_once(expr: str, tz: ZoneInfo) -> OnceRule:
    text = expr.strip()
    hint = (
        "use an ISO 8601 date-time with offset, e.g. '2026-12-01T08:30:00+02:00' or "
        "'2026-12-01T06:30:00Z', or a local date-time such as '2026-12-01T08:30' (read in the task timezone)"
    )
    if re.fullmatch(r"\d{4}-?\d{2}-?\d{2}", text, re.ASCII):
        raise invalid(f"once {quote(expr)} has no time of day; {hint}")
    if text[-1:] == "z":
        text = text[:-1] + "Z"
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise invalid(f"once {quote(expr)} is not an ISO 8601 date-time; {hint}") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=tz)  # fold=0: same DST rule as cron and rrule
    try:
        instant = parsed.astimezone(UTC)
    except OverflowError:
        instant = LATEST
    if instant >= LATEST:
        raise invalid(f"once {quote(expr)} is too far in the future; the latest instant pao schedules is 9998-12-31")
    return OnceRule(instant)


_EVENT_SEGMENT = re.compile(r"[A-Za-z0-9_:-]+", re.ASCII)


def parse_event(expr: str) -> NeverRule:
    """A topic pattern: an exact topic ('email.received'), a trailing wildcard ('home.*': every topic
    under 'home.'), or '*' (every topic)."""
    text = expr.strip()
    hint = "e.g. 'orders.created', 'orders.*' or '*'; segments of letters, digits, _ : - separated by dots"
    if not text:
        raise invalid(f"event topic pattern is empty; {hint}")
    if len(text) > MAX_EVENT_PATTERN_LEN:
        raise invalid(f"event topic pattern {quote(text, 60)} is longer than {MAX_EVENT_PATTERN_LEN} characters")
    segments = text.split(".")
    if "" in segments:
        raise invalid(f"event topic pattern {quote(text)} has an empty segment between dots; {hint}")
    for index, segment in enumerate(segments):
        if segment == "*" and index == len(segments) - 1:
            continue
        if "*" in segment:
            raise invalid(f"event topic pattern {quote(text)}: '*' may only be the whole last segment; {hint}")
        if not _EVENT_SEGMENT.fullmatch(segment):
            bad = sorted({c for c in segment if not _EVENT_SEGMENT.fullmatch(c)})
            raise invalid(f"event topic pattern {quote(text)} contains {''.join(bad)!r}; {hint}")
    return NeverRule()


_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
    r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?",
    re.ASCII,
)
_SECONDS = re.compile(r"\d+(?:\.\d+)?", re.ASCII)


def parse_condition(expr: str) -> IntervalRule:
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
        raise invalid(f"condition interval {quote(expr)} is not valid{extra}; {hint}")
    if interval < MIN_CONDITION_INTERVAL:
        raise invalid(f"condition interval {quote(expr)} is shorter than 1 second; {hint}")
    if interval > MAX_CONDITION_INTERVAL:
        raise invalid(f"condition interval {quote(expr)} is longer than {MAX_CONDITION_INTERVAL.days} days; {hint}")
    return IntervalRule(interval)
