"""What every tool shares: annotations true to its effects, argument types, and the error translation."""

from __future__ import annotations

import functools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, ParamSpec, TypeVar
from uuid import UUID

from mcp.server.mcpserver.exceptions import ToolError
from mcp_types import ToolAnnotations
from pydantic import Field, Strict

from pao_orchestrator import logs
from pao_orchestrator.errors import PaoError

log = logging.getLogger("pao_orchestrator.server.tools")

P = ParamSpec("P")
R = TypeVar("R")

READ = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)
# Lists the tools of downstream servers: starts them, and what they say comes from outside.
READ_OPEN = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=True)
WRITE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False)
# Saving a task starts the downstream servers its pipeline names, to check their tools' schemas.
CREATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=True)
# update_task overwrites a pipeline (and probes downstream servers like create_task).
OVERWRITE = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)
# run_now executes a pipeline: any downstream tool, with any effect. Not harmless, not closed-world.
RUN = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=False, open_world_hint=True)
CANCEL = ToolAnnotations(read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False)
# Pausing a paused task or resuming an active one changes nothing: say so to clients that retry.
STATE = ToolAnnotations(read_only_hint=False, destructive_hint=False, idempotent_hint=True, open_world_hint=False)

TaskId = Annotated[UUID, Field(description="The task's id.")]
RunId = Annotated[UUID, Field(description="The run's id.")]
Limit = Annotated[int, Strict(), Field(ge=1, le=200, description="Page size.")]
Cursor = Annotated[str | None, Field(description="next_cursor of the previous page.")]


def tool_errors(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn domain errors into tool errors; their text is written for the model to act on."""

    name = fn.__name__

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        # Every line logged during the call carries its request id (and the tool's name).
        with logs.bind(request_id=uuid.uuid4().hex[:16], tool=name):
            started = time.perf_counter()
            try:
                result = await fn(*args, **kwargs)
            except PaoError as exc:
                log.info("tool %s refused in %.1f ms: %s", name, (time.perf_counter() - started) * 1000, exc)
                raise ToolError(str(exc)) from exc
            except Exception:
                log.exception("tool %s failed", name)
                raise
            log.info("tool %s answered in %.1f ms", name, (time.perf_counter() - started) * 1000)
            return result

    return wrapper
