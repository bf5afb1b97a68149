"""Built-in steps of the reserved server `pao`: they need no downstream process."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from pao_orchestrator.errors import StepError


@dataclass(frozen=True)
class Builtin:
    description: str
    input_schema: dict[str, Any]
    # Whether a call can take time (and so must be stoppable by cancel_run and its timeout_seconds);
    # one that cannot is awaited directly, saving the watch on every run of the cheap steps.
    waits: bool = False


BUILTINS: dict[str, Builtin] = {
    "noop": Builtin(
        "Do nothing and return the arguments it was given (useful to shape data between steps).",
        {"type": "object", "additionalProperties": True},
    ),
    "publish_event": Builtin(
        "Publish an event (topic, data, optional dedupe_key; default: one per run and step, so a retry "
        "does not publish twice); returns {event_id, duplicate, runs}.",
        {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "minLength": 1, "maxLength": 256},
                "data": {"type": "object"},
                "dedupe_key": {"type": "string", "minLength": 1, "maxLength": 500},
            },
            "required": ["topic"],
            "additionalProperties": False,
        },
    ),
    "sleep": Builtin(
        "Wait `seconds` (0..3600) and return {'slept': seconds}.",
        {
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 3600}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
        waits=True,
    ),
}


async def call_builtin(tool: str, arguments: dict[str, Any]) -> Any:
    """Run built-in `pao.<tool>`; arguments were validated against its schema."""
    if tool == "noop":
        return dict(arguments)
    if tool == "sleep":
        seconds = float(arguments["seconds"])
        await asyncio.sleep(seconds)
        return {"slept": seconds}
    known = ", ".join(f"pao.{name}" for name in sorted(BUILTINS))
    raise StepError(f"unknown built-in step 'pao.{tool}'; built-ins are: {known}", retryable=False)
