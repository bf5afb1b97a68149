"""Checking a step's arguments against the tool's input schema (JSON Schema)."""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import jsonschema

from pao_orchestrator.errors import StepError


@functools.lru_cache(maxsize=1024)
def _validator(schema_json: str) -> jsonschema.protocols.Validator | None:
    """A compiled validator per distinct schema (checking the schema itself costs more than validating)."""
    schema = json.loads(schema_json)
    cls = jsonschema.validators.validator_for(schema)
    try:
        cls.check_schema(schema)
    except jsonschema.SchemaError:
        # A server publishing a broken schema should not block its own tool; it judges the call.
        return None
    return cls(schema)


def validate_arguments(uses: str, schema: Mapping[str, Any] | None, arguments: dict[str, Any]) -> None:
    """Raise a non-retryable StepError naming the first argument that does not fit `schema`."""
    if not schema:
        return
    validator = _validator(json.dumps(schema, sort_keys=True))
    if validator is None:
        return
    error = jsonschema.exceptions.best_match(validator.iter_errors(arguments))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(arguments)"
        raise StepError(f"{uses}: invalid arguments at {where}: {error.message}", retryable=False)
