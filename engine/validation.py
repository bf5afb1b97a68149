"""Turn pydantic validation errors into messages an agent can act on."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from pao_orchestrator.errors import InvalidArgument

M = TypeVar("M", bound=BaseModel)


def _location(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out.replace("with_", "with")


def describe(exc: ValidationError) -> InvalidArgument:
    """The first error as an InvalidArgument naming the field; the rest summarised after it."""
    errors = exc.errors(include_url=False)
    parts = []
    for err in errors:
        where = _location(tuple(err["loc"])) or "(arguments)"
        message = err["msg"]
        if err["type"] == "extra_forbidden":
            message = "is not a known field; remove it (see the tool's input schema)"
        elif err["type"] == "missing":
            message = "is required"
        parts.append((where, message))
    field, first = parts[0]
    rest = "; ".join(f"{w}: {m}" for w, m in parts[1:])
    return InvalidArgument(field, first + (f" (also: {rest})" if rest else ""))


def _join(path: str, key: str | int) -> str:
    if isinstance(key, int):
        return f"{path}[{key}]"
    return f"{path}.{key}" if path else key


def check_plain(value: Any, path: str = "") -> None:
    """Refuse what JSON in Postgres cannot hold, naming where: a NUL character (in text or a key),
    a lone surrogate, NaN or Infinity. Silently changed (NaN stored as null) or refused by Postgres
    with a bare error otherwise."""
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        item, where = stack.pop()
        if isinstance(item, str):
            if "\x00" in item:
                raise InvalidArgument(where, "contains a NUL character (\\u0000), which cannot be stored; remove it")
            if not item.isascii() and any("\ud800" <= c <= "\udfff" for c in item):
                raise InvalidArgument(where, "contains a lone surrogate (half a UTF-16 pair), which is not text")
        elif isinstance(item, float):
            if not math.isfinite(item):
                name = "NaN" if math.isnan(item) else "Infinity"
                raise InvalidArgument(where, f"is {name}; only finite numbers can be stored")
        elif isinstance(item, Mapping):
            for key, sub in item.items():
                if isinstance(key, str) and ("\x00" in key or any("\ud800" <= c <= "\udfff" for c in key)):
                    raise InvalidArgument(where, f"has a key {key!r} with a NUL or a lone surrogate; rename it")
                stack.append((sub, _join(where, str(key))))
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, _join(where, index)) for index, sub in enumerate(item))
        elif isinstance(item, BaseModel):  # the MCP layer hands over nested models already built
            stack.append((item.model_dump(by_alias=True), where))


def parse(model: type[M], data: Any) -> M:
    """Validate `data` into `model`, raising InvalidArgument instead of ValidationError.

    `check_plain` runs first, on the whole input: NUL, lone surrogates, NaN and Infinity are
    refused with their path wherever they are (in a title, a key, deep in a payload).
    """
    check_plain(data)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise describe(exc) from None
