"""Typed records from asyncpg rows: every row that leaves the store is one of these dataclasses.

A record class lists the columns it carries; `from_row` picks them out of a
row (ignoring columns it does not name, so a later migration adding a column
breaks nothing) and turns the words the schema CHECKs into their vocabulary
enums.
"""

from __future__ import annotations

import dataclasses
import functools
import typing
from collections.abc import Mapping
from enum import Enum
from typing import Any, Self


class Record:
    """Base of the store's row records (frozen dataclasses)."""

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> Self:
        return cls(**{name: convert(row[name]) for name, convert in _columns(cls)})  # type: ignore[arg-type]

    def as_dict(self) -> dict[str, Any]:
        """The record's fields as a shallow dict (for pydantic models built from it)."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}  # type: ignore[arg-type]


def _same(value: Any) -> Any:
    return value


def _enum_or_none(enum: type[Enum]) -> Any:
    return lambda value: None if value is None else enum(value)


@functools.cache
def _columns(cls: type[Record]) -> tuple[tuple[str, Any], ...]:
    hints = typing.get_type_hints(cls)
    columns = []
    for field in dataclasses.fields(cls):  # type: ignore[arg-type]
        hint = hints[field.name]
        converter = _same
        for candidate in (hint, *typing.get_args(hint)):
            if isinstance(candidate, type) and issubclass(candidate, Enum):
                converter = _enum_or_none(candidate)
                break
        columns.append((field.name, converter))
    return tuple(columns)
