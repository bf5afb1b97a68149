"""The Redis Streams bridge against a real Redis: outgoing through the outbox, incoming through a
consumer group. CI=true requires the machine's Redis; elsewhere these tests skip when it is absent."""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
import redis.asyncio as aioredis

from pao_orchestrator.contracts import CONSUMER_GROUP
from pao_orchestrator.engine.runtime import EventLimits, Ingest, Relay
from pao_orchestrator.store import streams
from tests.conftest import REDIS_FOR_TESTS
from tests.engine.support import create, engine_on, wait_run
from tests.server.serving import free_port

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


@pytest.fixture
async def redis_url() -> AsyncIterator[str]:
    url = os.environ.get(REDIS_FOR_TESTS, DEFAULT_REDIS)  # REDIS_URL, set aside by conftest
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true but Redis at {url} does not answer ({exc}); .ci/run starts one")
        pytest.skip(f"no Redis at {url} ({exc}); set REDIS_URL or start redis-server (CI=true makes this a failure)")
    finally:
        await client.aclose()
    yield url


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys: list[str] = []
    client.test_keys = keys  # type: ignore[attr-defined]
    try:
        yield client
    finally:
        if keys:
            await client.delete(*keys)
        await client.aclose()


def unique_stream(client: aioredis.Redis, name: str) -> str:
    stream = f"pao:test:{name}:{uuid.uuid4().hex[:10]}"
    client.test_keys.extend([stream, stream + ":dead"])  # type: ignore[attr-defined]
    return stream


@pytest.fixture
async def redis_server_later() -> AsyncIterator[tuple[int, list[asyncio.subprocess.Process]]]:
    """A port where no Redis listens yet, and a list to put the redis-server started later in."""
    if shutil.which("redis-server") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but redis-server is not installed")
        pytest.skip("redis-server is not installed")
    started: list[asyncio.subprocess.Process] = []
    yield free_port(), started
    for process in started:
        process.terminate()
        await asyncio.wait_for(process.wait(), timeout=10)


async def test_events_published_while_redis_is_down_are_delivered_when_it_comes_back(
    database_url: str,
    mcp_config: Path,
    tmp_path: Path,
    db: asyncpg.Pool,
    redis_server_later: tuple[int, list[asyncio.subprocess.Process]],
) -> None:
    port, started = redis_server_later
    url = f"redis://127.0.0.1:{port}/0"
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        relay = Relay(engine.db, redis_url=url, stream="pao:events", dsn=database_url, poll=0.1)
        await relay.register()  # what run() does first, even with Redis down
        running = asyncio.create_task(relay.run())
        try:
            published = [
                (
                    await engine.publish_event(
                        engine.owner, topic="sensor.t", data={"i": i}, dedupe_key=None, source=None
                    )
                )
                for i in range(300)
            ]
            await asyncio.sleep(0.5)  # the relay tries, and fails, meanwhile
            relay_health = (await engine.health())["relay"]
            assert relay_health["waiting"] == 300 and relay_health["oldest_seconds"] > 0
            started.append(
                await asyncio.create_subprocess_exec(
                    *("redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"),
                    stdout=asyncio.subprocess.DEVNULL,
                    stderr=asyncio.subprocess.DEVNULL,
                )
            )
            client = aioredis.Redis.from_url(url, decode_responses=True)
            try:
                async with asyncio.timeout(20):
                    while True:
                        try:
                            if await client.xlen("pao:events") >= 300:
                                break
                        except Exception:
                            pass
                        await asyncio.sleep(0.1)
                entries = await client.xrange("pao:events")
            finally:
                await client.aclose()
        finally:
            await relay.stop()
            await asyncio.wait_for(running, timeout=10)
        assert [int(fields["event_id"]) for _, fields in entries] == [p.event_id for p in published]
        assert entries[0][1]["topic"] == "sensor.t" and entries[0][1]["data"] == '{"i":0}'
        assert (await engine.health())["relay"]["waiting"] == 0


async def test_run_ends_go_out_too_and_nothing_is_sent_twice(
    database_url: str, mcp_config: Path, tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    stream = unique_stream(redis, "out")
    async with engine_on(database_url, mcp_config, tmp_path) as engine:
        # No relay has ever run on this database: events do not pile up in an outbox nobody empties.
        await engine.publish_event(engine.owner, topic="before.relay", data={}, dedupe_key=None, source=None)
        assert (await engine.health())["relay"] | {"oldest_seconds": None} == {
            "redis": False,
            "relay_running": False,
            "stream_out": "pao:events",
            "stream_in": "pao:inbox",
            "waiting": 0,
            "oldest_seconds": None,
        }
        relay = Relay(engine.db, redis_url=redis_url, stream=stream, dsn=database_url)
        await relay.register()
        task = await create(engine, [{"id": "a", "uses": "pao.noop", "with": {}}])
        run = await wait_run(engine, (await engine.run_now(engine.owner, task)).id)
        assert run.status == "succeeded"
        published = await engine.publish_event(engine.owner, topic="x.y", data={}, dedupe_key=None, source=None)
        async with streams.connect(redis_url) as client:
            assert await relay.relay_once(client) == 2
            assert await relay.relay_once(client) == 0
    entries = [fields for _, fields in await redis.xrange(stream)]
    assert [e["topic"] for e in entries] == ["run.succeeded", "x.y"]
    assert entries[0]["data"].count(str(run.id)) == 1 and int(entries[1]["event_id"]) == published.event_id


async def test_ingest_redelivers_what_a_dead_consumer_left_processes_it_once_and_dead_letters_malformed_entries(
    database_url: str, mcp_config: Path, tmp_path: Path, db: asyncpg.Pool, redis_url: str, redis: aioredis.Redis
) -> None:
    stream = unique_stream(redis, "in")
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        created = await engine.create_task(
            engine.owner,
            {
                "title": "door",
                "schedule_kind": "event",
                "schedule_expr": "door.*",
                "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"who": "${event.data.who}"}}]},
            },
        )
        await streams.ensure_group(redis, stream, CONSUMER_GROUP)
        read_by_dead = await redis.xadd(stream, {"topic": "door.opened", "data": '{"who": "ana"}'})
        committed_not_acked = await redis.xadd(stream, {"topic": "door.closed", "data": '{"who": "bo"}'})
        # A consumer reads the first entry and dies before doing anything.
        await redis.xreadgroup(CONSUMER_GROUP, "dead-consumer", {stream: ">"}, count=1)
        # Another publishes the second one and dies before acknowledging it.
        dying = Ingest(engine.db, redis_url=redis_url, stream=stream, consumer="dying", limits=EventLimits())
        raw = await redis.xreadgroup(CONSUMER_GROUP, "dying", {stream: ">"}, count=1)
        (entry_id, fields) = raw[0][1][0]
        assert entry_id == committed_not_acked
        assert await dying.handle(redis, streams.Entry(entry_id, fields))
        # Malformed entries, and a good one after them.
        await redis.xadd(stream, {"topic": "door.opened", "data": "{not json"})
        await redis.xadd(stream, {"topic": "door opened", "data": "{}"})
        await redis.xadd(stream, {"data": "{}"})
        await redis.xadd(stream, {"topic": "door.locked", "data": "{}", "dedupe_key": "lock-1"})
        await asyncio.sleep(0.1)
        survivor = Ingest(
            engine.db, redis_url=redis_url, stream=stream, consumer="survivor", limits=EventLimits(), claim_idle_ms=50
        )
        async with streams.connect(redis_url) as client:
            async with asyncio.timeout(10):
                while await survivor.ingest_once(client):
                    pass
        async with db.acquire() as conn:
            topics = [r["topic"] for r in await conn.fetch("SELECT topic FROM events ORDER BY id")]
            runs = await conn.fetchval("SELECT count(*) FROM runs WHERE task_id = $1", created.task.id)
        assert sorted(topics) == ["door.closed", "door.locked", "door.opened"]  # door.closed once, not twice
        assert runs == 3
        pending = await redis.xpending(stream, CONSUMER_GROUP)
        assert pending["pending"] == 0
        dead = [fields for _, fields in await redis.xrange(stream + ":dead")]
        reasons = [d["reason"] for d in dead]
        assert len(dead) == 3
        assert reasons[0].startswith("data: is not JSON")
        assert "is not a topic" in reasons[1]
        assert reasons[2].startswith("topic: is missing")
        assert all(d["stream"] == stream and d["entry_id"] for d in dead)
        assert read_by_dead


async def test_an_engine_with_redis_url_bridges_both_ways(
    database_url: str, mcp_config: Path, tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    inbox, outbox = unique_stream(redis, "inbox"), unique_stream(redis, "outbox")
    async with engine_on(
        database_url, mcp_config, tmp_path, redis_url=redis_url, stream_in=inbox, stream_out=outbox
    ) as engine:
        created = await engine.create_task(
            engine.owner,
            {
                "title": "on mail",
                "schedule_kind": "event",
                "schedule_expr": "mail.in",
                "payload": {"pipeline": [{"id": "a", "uses": "pao.noop", "with": {"s": "${event.data.subject}"}}]},
            },
        )
        await redis.xadd(inbox, {"topic": "mail.in", "data": '{"subject": "hi"}'})
        async with asyncio.timeout(20):
            while True:
                topics = [f["topic"] for _, f in await redis.xrange(outbox)]
                if "run.succeeded" in topics:
                    break
                await asyncio.sleep(0.05)
        assert topics == ["mail.in", "run.succeeded"]
        runs, _ = await engine.list_runs(engine.owner, task_id=created.task.id, status=None, limit=5, cursor=None)
        assert [r.status for r in runs] == ["succeeded"] and runs[0].trigger_data["event"]["data"] == {"subject": "hi"}
        assert (await engine.health())["relay"]["relay_running"] is True
        assert (await redis.xpending(inbox, CONSUMER_GROUP))["pending"] == 0
        assert [c["name"] for c in await redis.xinfo_consumers(inbox, CONSUMER_GROUP)] == [engine.worker.name]  # type: ignore[union-attr]
    # Stopped with nothing pending, its consumer left the group: restarts do not pile them up.
    assert await redis.xinfo_consumers(inbox, CONSUMER_GROUP) == []


async def test_the_outgoing_stream_is_trimmed_to_about_its_maxlen(
    database_url: str, mcp_config: Path, tmp_path: Path, redis_url: str, redis: aioredis.Redis
) -> None:
    stream = unique_stream(redis, "trim")
    async with engine_on(database_url, mcp_config, tmp_path, run_worker=False) as engine:
        relay = Relay(engine.db, redis_url=redis_url, stream=stream, dsn=database_url, maxlen=100, batch=500)
        await relay.register()
        for i in range(3_000):
            await engine.publish_event(engine.owner, topic="t.n", data={"i": i}, dedupe_key=None, source=None)
        async with streams.connect(redis_url) as client:
            relayed = 0
            while (done := await relay.relay_once(client)) > 0:
                relayed += done
    assert relayed == 3_000
    # MAXLEN ~ trims whole radix-tree nodes (100 entries each by default): about 100, never thousands.
    assert 100 <= await redis.xlen(stream) < 300
    newest = await redis.xrevrange(stream, count=1)
    assert '"i": 2999' in newest[0][1]["data"] or '"i":2999' in newest[0][1]["data"]
