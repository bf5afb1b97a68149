"""Built-in steps of the reserved server `pao`: they need no downstream process."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from store.errors import StepError

PublishFn = Callable[[str, dict[str, Any], str | None], Awaitable[int]]


@dataclass(frozen=True)
class Builtin:
    description: str
    input_schema: dict[str, Any]


BUILTINS: dict[str, Builtin] = {
    "noop": Builtin(
        "Do nothing and return the arguments it was given (useful to shape data between steps).",
        {"type": "object", "additionalProperties": True},
    ),
    "sleep": Builtin(
        "Wait `seconds` (0..3600) and return {'slept': seconds}.",
        {
            "type": "object",
            "properties": {"seconds": {"type": "number", "minimum": 0, "maximum": 3600}},
            "required": ["seconds"],
            "additionalProperties": False,
        },
    ),
    "publish_event": Builtin(
        "Publish an event (topic, data, optional dedupe_key); tasks with schedule_kind 'event' "
        "on a matching topic fire. Returns {'event_id': id}.",
        {
            "type": "object",
            "properties": {
                "topic": {"type": "string", "minLength": 1},
                "data": {"type": "object"},
                "dedupe_key": {"type": ["string", "null"]},
            },
            "required": ["topic"],
            "additionalProperties": False,
        },
    ),
}


async def call_builtin(tool: str, arguments: dict[str, Any], *, publish: PublishFn | None) -> Any:
    """Run built-in `pao.<tool>`; arguments were validated against its schema."""
    if tool == "noop":
        return dict(arguments)
    if tool == "sleep":
        seconds = float(arguments["seconds"])
        await asyncio.sleep(seconds)
        return {"slept": seconds}
    if tool == "publish_event":
        if publish is None:
            raise StepError("pao.publish_event: events are not available in this process", retryable=False)
        event_id = await publish(
            str(arguments["topic"]), dict(arguments.get("data") or {}), arguments.get("dedupe_key")
        )
        return {"event_id": event_id}
    raise StepError(
        f"unknown built-in step 'pao.{tool}'; built-ins are: {', '.join(sorted(BUILTINS))}", retryable=False
    )
