"""Errors a pipeline template raises, and the wording helpers their messages share.

`TemplateError` is what callers see; `ValueProblem` and `MissingValue` are raised
inside rendering and turned into a TemplateError quoting the template (see
`engine.templates`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, Final

from jinja2.exceptions import UndefinedError
from jinja2.utils import missing

from pao_orchestrator.errors import StepError

_QUOTE_LIMIT: Final = 200
_LIST_LIMIT: Final = 40


class TemplateError(StepError):
    """A template failed at run time (missing field, bad value, sandbox violation); never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class ValueProblem(Exception):
    """Raised inside rendering (filters, finalize) and turned into a TemplateError quoting the template."""


class MissingValue(UndefinedError):
    """An undefined value was used; carries the object and the name that was looked up."""

    def __init__(self, message: str | None = None, *, obj: Any = missing, name: Any = None) -> None:
        super().__init__(message)
        self.obj = obj
        self.name = name


# --------------------------------------------------------------------------- messages


def quote(source: str) -> str:
    if len(source) > _QUOTE_LIMIT:
        source = source[: _QUOTE_LIMIT - 3] + "..."
    return f"'{source}'"


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def join_path(field: str, key: Any) -> str:
    return f"{field}.{key}" if field else str(key)


def list_names(keys: Iterable[Any], empty: str = "(none)") -> str:
    names = [str(k) for k in keys]
    if not names:
        return empty
    if len(names) > _LIST_LIMIT:
        return ", ".join(names[:_LIST_LIMIT]) + f", ... ({len(names) - _LIST_LIMIT} more)"
    return ", ".join(names)


def kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"
