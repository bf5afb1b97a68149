"""Build a tool function's signature from a pydantic model, so one model is both schema and validator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from pydantic import BaseModel

F = TypeVar("F", bound=Callable[..., Any])


def model_parameters(model: type[BaseModel], *, exclude: frozenset[str] = frozenset()) -> list[inspect.Parameter]:
    """Keyword-only parameters mirroring the model's fields: types, constraints, descriptions, defaults."""
    params: list[inspect.Parameter] = []
    for name, info in model.model_fields.items():
        if name in exclude:
            continue
        annotation = Annotated[info.annotation, info]  # type: ignore[name-defined]
        default = inspect.Parameter.empty if info.is_required() else info.get_default(call_default_factory=True)
        params.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=annotation))
    # Required parameters first keeps the published schema readable.
    params.sort(key=lambda p: p.default is not inspect.Parameter.empty)
    return params


def with_signature(fn: F, params: list[inspect.Parameter], return_annotation: Any) -> F:
    """Give `fn(**kwargs)` an explicit signature that the MCP SDK reads to build the input schema."""
    fn.__signature__ = inspect.Signature(params, return_annotation=return_annotation)  # type: ignore[attr-defined]
    return fn
