"""Keyset pages over (created_at, id), newest first: the cursor an agent passes back for the next page."""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Protocol, TypeVar
from uuid import UUID

from pao_orchestrator.errors import InvalidArgument


class Keyed(Protocol):
    """A row a page is cut from: newest first by (created_at, id)."""

    @property
    def created_at(self) -> datetime: ...
    @property
    def id(self) -> UUID: ...


R = TypeVar("R", bound=Keyed)


def encode_cursor(created_at: datetime, row_id: UUID) -> str:
    return base64.urlsafe_b64encode(f"{created_at.isoformat()}|{row_id}".encode()).decode()


def decode_cursor(cursor: str | None) -> tuple[datetime, UUID] | None:
    """The (created_at, id) to continue before; None for the first page."""
    if not cursor:
        return None
    try:
        stamp, row_id = base64.urlsafe_b64decode(cursor.encode()).decode().split("|")
        return datetime.fromisoformat(stamp).astimezone(UTC), UUID(row_id)
    except ValueError:
        raise InvalidArgument(
            "cursor", "is not a cursor this server returned; omit it to start from the newest"
        ) from None


def page(rows: Sequence[R], limit: int) -> tuple[list[R], str | None]:
    """Cut rows fetched with `limit + 1` to a page, and the cursor of the next page (None on the last)."""
    kept = list(rows[:limit])
    more = len(rows) > limit
    return kept, encode_cursor(kept[-1].created_at, kept[-1].id) if more and kept else None
