"""Group commit for run completions: many runs finishing together are written in one statement.

A run's end (its status and its last step) is handed to `Completions.submit`,
which waits until the batch it joined is committed and says whether this
worker still held the run. At most one write is in flight; runs that finish
while it is in flight form the next batch, so batches grow with load and a
lone run is written at once.

One run must never cost the others their record. The executor checks what it
hands over (see `storable`), and if a batch still fails, its runs are written
one by one: the innocent ones commit, and a run whose end cannot be stored is
recorded as failed with the database's reason instead (so it is not re-run by
the lease sweep).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from uuid import UUID

import asyncpg

from pao_orchestrator import logs
from pao_orchestrator.engine.runtime import storable
from pao_orchestrator.store import Completion
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.vocabulary import RunStatus

log = logging.getLogger(__name__)

MAX_BATCH = 500
# SQLSTATE classes that say "this data", not "this connection": data exception, integrity
# constraint violation, program limit exceeded.
_DATA_CLASSES = frozenset({"22", "23", "54"})


def _about_the_data(exc: BaseException) -> bool:
    if isinstance(exc, asyncpg.PostgresError):
        return str(exc.sqlstate or "")[:2] in _DATA_CLASSES
    # Raised while encoding a value for the wire (asyncpg's DataError is a ValueError too).
    return isinstance(exc, (ValueError, TypeError))


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
            # The batch is everyone's: its task does not carry the log context of the run that started it.
            self._writer = asyncio.create_task(self._write(), context=logs.detached())
        return await future

    async def _write(self) -> None:
        # Yield once so that runs finishing in this same loop iteration join the first batch.
        await asyncio.sleep(0)
        while self._pending:
            batch, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
            try:
                held = await self._finish([c for c, _ in batch])
            except BaseException as exc:
                if not isinstance(exc, Exception):
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(asyncio.CancelledError())
                    raise
                if len(batch) > 1:
                    log.warning("a batch of %d run completions failed (%s); writing them one by one", len(batch), exc)
                await self._one_by_one(batch)
                continue
            for completion, future in batch:
                if not future.done():
                    future.set_result(completion.run_id in held)

    async def _finish(self, items: list[Completion]) -> set[UUID]:
        async with self._db.acquire() as conn:
            return set(await run_store.finish_many(conn, self._worker, items))

    async def _one_by_one(self, batch: list[tuple[Completion, asyncio.Future[bool]]]) -> None:
        for completion, future in batch:
            if future.done():
                continue
            try:
                held = await self._finish([completion])
            except Exception as exc:
                if not _about_the_data(exc):
                    future.set_exception(exc)
                    continue
                log.error("run %s: its end could not be stored (%s); recording it as failed", completion.run_id, exc)
                try:
                    held = await self._finish([_unstorable(completion, exc)])
                except Exception as again:
                    future.set_exception(again)
                    continue
            future.set_result(completion.run_id in held)

    async def aclose(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                await self._writer


def _unstorable(completion: Completion, exc: Exception) -> Completion:
    """The end of a run whose own record Postgres refused: failed, with the refusal as its error."""
    return Completion(
        run_id=completion.run_id,
        status=RunStatus.FAILED,
        error=storable.text(f"the run ended {completion.status}, but its record could not be stored: {exc}"),
        outputs=None,
        reason="failed: its record could not be stored",
    )
