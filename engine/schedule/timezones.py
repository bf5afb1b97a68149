"""IANA time zones: load one by name (with an actionable error) and format an instant in it."""

from __future__ import annotations

import functools
import re
from datetime import datetime
from typing import Final
from zoneinfo import ZoneInfo, available_timezones

from pao_orchestrator.engine.schedule.errors import quote, require_aware
from pao_orchestrator.errors import InvalidArgument

_IANA_HINT: Final = "use an IANA name such as 'Europe/Chisinau' or 'UTC'"


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
    message = f"unknown timezone {quote(name)}; {_IANA_HINT}"
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
    require_aware(instant, "instant")
    return instant.astimezone(tz).isoformat()
