"""Group commit for run completions: many runs finishing together are written in one statement.

A run's end (its status and its last step) is handed to `Completions.submit`,
which waits until the batch it joined is committed and says whether this
worker still held the run. At most one write is in flight; runs that finish
while it is in flight form the next batch, so batches grow with load and a
lone run is written at once.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from pao_orchestrator.store import Completion
from pao_orchestrator.store import runs as run_store

MAX_BATCH = 500


class Completions:
    """Batches `finish_many` writes of one worker."""

    def __init__(self, db: asyncpg.Pool, worker: str) -> None:
        self._db = db
        self._worker = worker
        self._pending: list[tuple[Completion, asyncio.Future[bool]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def submit(self, completion: Completion) -> bool:
        """Record the run's end; False when this worker no longer holds the run."""
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._pending.append((completion, future))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write())
        return await future

    async def _write(self) -> None:
        # Yield once so that runs finishing in this same loop iteration join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                async with self._db.acquire() as conn:
                    held = await run_store.finish_many(conn, self._worker, [c for c, _ in batch])
            except BaseException as exc:
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc if isinstance(exc, Exception) else asyncio.CancelledError())
                if not isinstance(exc, Exception):
                    raise
                continue
            for completion, future in batch:
                if not future.done():
                    future.set_result(completion.run_id in held)

    async def aclose(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer
