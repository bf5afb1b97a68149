"""How schedule input is reported as wrong: quoted user text, InvalidArgument on schedule_expr.

Shared by every schedule module; imports nothing from them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

from pao_orchestrator.errors import InvalidArgument

_SCHEDULE_FIELD: Final = "schedule_expr"


def quote(text: str, limit: int = 200) -> str:
    """Quote user text for an error message (one line, bounded length)."""
    flat = text.replace("\r", "").replace("\n", "\\n")
    if len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return f"'{flat}'"


def invalid(message: str) -> InvalidArgument:
    """An InvalidArgument on `schedule_expr` carrying `message`."""
    return InvalidArgument(_SCHEDULE_FIELD, message)


def require_aware(value: datetime, name: str) -> None:
    """Internal contract: the engine only ever passes tz-aware instants."""
    if not isinstance(value, datetime) or value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{name} must be a tz-aware datetime, got {value!r}")
