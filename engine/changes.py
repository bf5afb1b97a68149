"""Changes of tasks, runs and steps, as every process hears them.

Database triggers announce each visible change on `CHANGES_CHANNEL`, whichever
process made it. A process keeps one LISTEN connection for all its readers (MCP
subscriptions, `run_now` waiting for its run), opened on the first subscription
and re-made after Postgres restarts. Subscribers are called on the event loop,
synchronously, and must not raise.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from uuid import UUID

from pao_orchestrator.contracts import CHANGES_CHANNEL
from pao_orchestrator.store import Listener
from pao_orchestrator.vocabulary import ChangeKind

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    """One announced change: of a task, a run, or one step of a run (`step_id`)."""

    kind: ChangeKind
    id: UUID
    step_id: str | None = None

    @classmethod
    def parse(cls, payload: str) -> list[Change] | None:
        """The changes a NOTIFY payload names ('run:<id>,<id>', 'step:<run id>:<step id>,...', ...);
        None if it is malformed."""
        prefix, _, rest = payload.partition(":")
        try:
            kind = ChangeKind(prefix)
            changes = []
            for item in rest.split(","):
                if kind == ChangeKind.STEP:
                    run_id, _, step_id = item.partition(":")
                    changes.append(cls(kind, UUID(run_id), step_id))
                else:
                    changes.append(cls(kind, UUID(item)))
            return changes
        except ValueError:
            return None


Subscriber = Callable[[Change], None]


class ChangeFeed:
    """One LISTEN connection per process, fanned out to in-process subscribers."""

    def __init__(self, dsn: str, *, check_seconds: float = 1.0) -> None:
        self._subscribers: dict[object, Subscriber] = {}
        self._listener = Listener(dsn, [CHANGES_CHANNEL], self._notified, wake=self._lost_or_made)
        self._check = check_seconds
        self._task: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self.reconnects = 0

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber` for every change from now on; returns an idempotent unsubscribe."""
        token = object()
        self._subscribers[token] = subscriber
        if self._task is None:
            self._task = asyncio.create_task(self._keep_listening(), name="change-feed")

        def unsubscribe() -> None:
            self._subscribers.pop(token, None)

        return unsubscribe

    async def ready(self, timeout: float = 10.0) -> bool:
        """Wait until the LISTEN connection is up (changes committed after this are heard)."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), timeout)
        return self._listener.connected

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._listener.close()

    async def _keep_listening(self) -> None:
        while True:
            try:
                if await self._listener.ensure():
                    self._connected.set()
                else:
                    self._connected.clear()
            except Exception:  # the feed must outlive any one failure; ensure() retries
                log.exception("change feed: LISTEN failed; retrying")
            await asyncio.sleep(self._check)

    def _lost_or_made(self) -> None:
        self.reconnects += 1

    def _notified(self, _channel: str, payload: str) -> None:
        changes = Change.parse(payload)
        if changes is None:
            log.warning("change feed: ignored a malformed payload %r", payload[:200])
            return
        subscribers = list(self._subscribers.values())
        for change in changes:
            for subscriber in subscribers:
                try:
                    subscriber(change)
                except Exception:  # fan-out boundary: one subscriber's bug must not starve the others
                    log.exception("change subscriber raised; continuing")
