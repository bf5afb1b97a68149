"""Turn pydantic validation errors into messages an agent can act on."""

from __future__ import annotations

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


def parse(model: type[M], data: Any) -> M:
    """Validate `data` into `model`, raising InvalidArgument instead of ValidationError."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise describe(exc) from None
