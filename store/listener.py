"""A LISTEN connection of its own, re-made when Postgres restarts.

The worker (pao_runs, pao_cancel) and the scheduler (pao_tasks) each keep one.
It is not taken from the pool: LISTEN must outlive pool checkouts and must not
hold a pool slot. `ensure()` is called from their loops; when the connection
has died it is closed for good (so nothing is left for the garbage collector)
and opened again, at most every `retry_seconds`. `wake` is called when the
connection is made or lost: either way the owner should look at the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Sequence

import asyncpg

from pao_orchestrator.store.database import DATABASE_ERRORS

log = logging.getLogger(__name__)

Handler = Callable[[str, str], None]  # (channel, payload)


class Listener:
    """LISTENs on `channels`, calling `handler(channel, payload)` for each notification."""

    def __init__(
        self,
        dsn: str,
        channels: Sequence[str],
        handler: Handler,
        *,
        wake: Callable[[], None] | None = None,
        retry_seconds: float = 5.0,
    ) -> None:
        self._dsn = dsn
        self._channels = list(channels)
        self._handler = handler
        self._wake = wake
        self._retry = retry_seconds
        self._conn: asyncpg.Connection | None = None
        self._retry_at = 0.0

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def ensure(self) -> bool:
        """Listen if not listening (and not retried too recently); True when listening."""
        if self.connected:
            return True
        now = asyncio.get_running_loop().time()
        if now < self._retry_at:
            return False
        await self.close()
        try:
            self._conn = await asyncpg.connect(self._dsn, timeout=10)
            if self._wake is not None:
                # Lost (a restart): the caller's loop should come round to ensure() again soon.
                wake = self._wake
                self._conn.add_termination_listener(lambda _conn: wake())
            for channel in self._channels:
                await self._conn.add_listener(channel, self._notified)
        except DATABASE_ERRORS as exc:
            log.warning("LISTEN %s failed (%s); retrying in %.0fs", ",".join(self._channels), exc, self._retry)
            await self.close()
            self._retry_at = now + self._retry
            return False
        if self._wake is not None:
            # Anything that happened while nobody listened is for the caller to look at now.
            self._wake()
        return True

    async def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), timeout=2)
        # close() on a connection cut by a restart raises; terminate() always marks it closed.
        conn.terminate()

    def _notified(self, _conn: object, _pid: int, channel: str, payload: str) -> None:
        self._handler(channel, payload)
