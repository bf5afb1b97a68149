"""The project's exception tree: one root, a few kinds that callers act on.

It sits at the bottom of the package, below the store, because every room may
raise or catch it and dependencies only point downwards (server -> engine ->
store -> here). Driver errors (asyncpg, redis) are translated into these at the
store boundary; the MCP layer turns them into tool errors whose text an LLM can
act on.
"""

from __future__ import annotations


class PaoError(Exception):
    """Root of every error this project raises on purpose."""


class InvalidArgument(PaoError):
    """A caller-supplied value is wrong; the message says which field and how to fix it."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}" if field else message)


class NotFound(PaoError):
    """The named object does not exist (or the caller may not see it)."""


class Conflict(PaoError):
    """The request clashes with the object's current state (e.g. snoozing a cancelled task)."""


class PermissionDenied(PaoError):
    """The caller is authenticated but lacks the scope for this action."""

    def __init__(self, message: str, *, scope: str | None = None) -> None:
        self.scope = scope
        super().__init__(message)


class ConfigurationError(PaoError):
    """The orchestrator's own configuration (environment, flags) is wrong; it refuses to start."""


class StoreUnavailable(PaoError):
    """The database could not be reached; the operation may be retried."""


class StepError(PaoError):
    """A pipeline step failed.

    `retryable` says whether running the step again could succeed: a timeout or
    a dead downstream server is retryable, an unknown tool or a template error
    is not.
    """

    def __init__(self, message: str, *, retryable: bool) -> None:
        self.retryable = retryable
        super().__init__(message)
