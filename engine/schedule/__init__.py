"""Schedules: cron, rrule, once, event and condition rules, and the wall-clock and DST math (pure; no I/O).

The door of the schedule room: other rooms import only the names below.
"""

from __future__ import annotations

from pao_orchestrator.engine.schedule.schedule import (
    MAX_PREVIEW,
    Schedule,
    parse_schedule,
    preview,
    validate_schedule,
)
from pao_orchestrator.engine.schedule.timezones import format_local, load_timezone

__all__ = [
    "MAX_PREVIEW",
    "Schedule",
    "format_local",
    "load_timezone",
    "parse_schedule",
    "preview",
    "validate_schedule",
]
