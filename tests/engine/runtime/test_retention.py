"""Retention on a million-row history: batched, one replica at a time, never waiting on live work."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path

import asyncpg

from pao_orchestrator.engine.runtime import Pruner, RetentionPolicy
from pao_orchestrator.store import retention as retention_store
from tests.engine.support import create, engine_on, new_task, wait_run

OLD_RUNS = 190_000  # finished 40..100 days ago: pruned, with their 4 steps each
RECENT_RUNS = 10_000  # finished 5 days ago: kept
STEPS_PER_RUN = 4
OLD_EVENTS, OLD_AUDIT = 50_000, 50_000


async def build_history(conn: asyncpg.Connection, task_id: object) -> None:
    """1,000,000 runs and steps (plus events and audit entries), each table in one INSERT ... SELECT.

    The history is written as it would stand after the fact: the run-end trigger (which publishes
    run.* events for runs that end now) is kept out of this synthetic load."""
    async with conn.transaction():
        await conn.execute("SET LOCAL session_replication_role = replica")
        await _insert_history(conn, task_id)


async def _insert_history(conn: asyncpg.Connection, task_id: object) -> None:
    await conn.execute(
        """
        INSERT INTO runs (task_id, status, trigger, scheduled_for, available_at, started_at, finished_at,
                          created_at)
        SELECT $1,
               (ARRAY['succeeded', 'failed', 'cancelled', 'skipped'])[1 + i % 4],
               'manual',
               t, t, t, t + interval '1 second', t
        FROM generate_series(1, $2::int + $3::int) AS i,
             LATERAL (SELECT CASE WHEN i <= $2::int THEN now() - interval '40 days' - i * interval '30 seconds'
                                  ELSE now() - interval '5 days' - i * interval '1 millisecond' END AS t) AS at
        """,
        task_id,
        OLD_RUNS,
        RECENT_RUNS,
    )
    await conn.execute(
        """
        INSERT INTO run_steps (run_id, attempt, step_index, step_id, uses, status, input, output,
                               started_at, finished_at, duration_ms)
        SELECT r.id, 1, s, 's' || s, 'pao.noop', 'succeeded', '{"x": 1}', '{"x": 1}',
               r.started_at, r.finished_at, 1.0
        FROM runs r, generate_series(0, $1 - 1) AS s
        """,
        STEPS_PER_RUN,
    )
    await conn.execute(
        """
        INSERT INTO events (topic, data, created_at)
        SELECT 'test.old', '{}', now() - interval '40 days' - i * interval '1 second'
        FROM generate_series(1, $1) AS i
        """,
        OLD_EVENTS,
    )
    await conn.execute(
        """
        INSERT INTO audit_log (action, target_type, target_id, created_at)
        SELECT 'test', 'task', 'x', now() - interval '400 days' - i * interval '1 second'
        FROM generate_series(1, $1) AS i
        """,
        OLD_AUDIT,
    )
    await conn.execute("ANALYZE")


async def counts(conn: asyncpg.Connection) -> dict[str, int]:
    tables = ("runs", "run_steps", "events", "audit_log")
    return {t: await conn.fetchval(f"SELECT count(*) FROM {t}") for t in tables}


async def test_a_million_row_history_is_pruned_in_batches_without_blocking_live_work(
    db: asyncpg.Pool, database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    now = datetime.now(UTC)
    history_task = await new_task(db, "0 9 * * *", created=now)
    async with db.acquire() as conn:
        started = time.perf_counter()
        await build_history(conn, history_task)
        built_in = time.perf_counter() - started
        before = await counts(conn)
        # An old queued run (never finished; backing off until tomorrow), and an old finished original
        # whose skipped duplicate is recent.
        waiting = await conn.fetchval(
            "INSERT INTO runs (task_id, status, trigger, created_at, available_at) "
            "VALUES ($1, 'queued', 'manual', now() - interval '90 days', now() + interval '1 day') RETURNING id",
            history_task,
        )
        original = await conn.fetchval(
            "SELECT id FROM runs WHERE finished_at < now() - interval '50 days' ORDER BY finished_at DESC LIMIT 1"
        )
        duplicate = await conn.fetchval(
            "INSERT INTO runs (task_id, status, trigger, deduped_of, finished_at) "
            "VALUES ($1, 'skipped', 'manual', $2, now()) RETURNING id",
            history_task,
            original,
        )
        held = await conn.fetchval("SELECT id FROM runs WHERE finished_at < now() - interval '60 days' LIMIT 1")
    assert before["runs"] + before["run_steps"] == (OLD_RUNS + RECENT_RUNS) * (1 + STEPS_PER_RUN) == 1_000_000
    assert built_in < 40, f"building the history took {built_in:.1f}s"

    policy = RetentionPolicy(runs_days=30, events_days=30, audit_days=365, batch_size=5000, pause_seconds=0.0)

    # Another replica is pruning (holds the lock): this one does nothing.
    async with db.acquire() as other:
        assert await retention_store.try_lock(other)
        try:
            skipped = await Pruner(db, policy).prune_once()
        finally:
            await retention_store.unlock(other)
    assert skipped.locked_out and skipped.deleted == {}

    # The engine's own pruner keeps everything here: the test's pruner is the one measured.
    keep = {"retention_runs_days": 0, "retention_events_days": 0, "retention_audit_days": 0}
    async with engine_on(database_url, fx_config, tmp_path, **keep) as engine:
        healthy = await create(engine, [{"id": "e", "uses": "fx.echo", "with": {"message": "live"}}])
        await wait_run(engine, (await engine.run_now(engine.owner, healthy)).id)  # the server is up
        async with db.acquire() as holder, holder.transaction():
            # A transaction holds an old run: pruning passes over it instead of waiting.
            await holder.execute("SELECT 1 FROM runs WHERE id = $1 FOR UPDATE", held)
            pruning = asyncio.create_task(Pruner(db, policy).prune_once())
            live: list[float] = []
            while not pruning.done():
                t0 = time.perf_counter()
                run = await wait_run(engine, (await engine.run_now(engine.owner, healthy)).id, timeout=20)
                assert run.status == "succeeded"
                live.append(time.perf_counter() - t0)
            result = await pruning
    assert not result.locked_out
    assert result.deleted == {"runs": OLD_RUNS - 1, "events": OLD_EVENTS, "audit_log": OLD_AUDIT}
    assert result.batches >= OLD_RUNS // 5000
    assert live, "no live run was measured while pruning"
    # Batches are short, and live runs went on between them (generous bounds for a busy shared machine).
    assert result.longest_batch < 5.0, result
    assert max(live) < 5.0, live

    async with db.acquire() as conn:
        left = await conn.fetchval("SELECT count(*) FROM runs WHERE task_id = $1", history_task)
        steps_left = await conn.fetchval(
            "SELECT count(*) FROM run_steps s JOIN runs r ON r.id = s.run_id WHERE r.task_id = $1", history_task
        )
        old_audit = await conn.fetchval("SELECT count(*) FROM audit_log WHERE created_at < now() - interval '365 days'")
        # Only old events go (the live runs' own run.* events are recent and stay).
        events = await conn.fetchval("SELECT count(*) FROM events WHERE created_at < now() - interval '30 days'")
        kept = await conn.fetch(
            "SELECT id, deduped_of FROM runs WHERE id = ANY($1::uuid[])", [waiting, duplicate, held]
        )
        orphans = await conn.fetchval(
            "SELECT count(*) FROM run_steps s LEFT JOIN runs r ON r.id = s.run_id WHERE r.id IS NULL"
        )
    assert left == RECENT_RUNS + 3  # the recent ones, the old queued one, the duplicate, the held one
    assert steps_left == (RECENT_RUNS + 1) * STEPS_PER_RUN
    assert {r["id"] for r in kept} == {waiting, duplicate, held}
    assert next(r for r in kept if r["id"] == duplicate)["deduped_of"] is None
    assert (old_audit, events, orphans) == (0, 0, 0)
