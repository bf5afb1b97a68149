"""The engine as one object: database, downstream pool, worker and scheduler, started and stopped together.

`open_engine` is what `pao serve` and `pao worker` (and tests) enter. The MCP
layer calls the Engine's methods and nothing below them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.contracts import BUILTIN_SERVER
from pao_orchestrator.engine import events as event_service
from pao_orchestrator.engine import lifecycle
from pao_orchestrator.engine import runs as run_service
from pao_orchestrator.engine import tasks as task_service
from pao_orchestrator.engine.downstream import DownstreamPool, Registry, load_registry
from pao_orchestrator.engine.models import Agent, Run, Task
from pao_orchestrator.engine.runtime import (
    BUILTINS,
    EventLimits,
    Executor,
    Ingest,
    Matcher,
    Prober,
    Relay,
    Renderer,
    Scheduler,
    Worker,
    worker_name,
)
from pao_orchestrator.engine.settings import Settings
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.store import events as event_store
from pao_orchestrator.store import migrate, open_database, schema_version
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.vocabulary import RunStatus, ScheduleKind, TaskStatus

log = logging.getLogger(__name__)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Tools:
    """The downstream pool seen as a catalog: what servers exist and what their tools take."""

    def __init__(self, registry: Registry, pool: DownstreamPool) -> None:
        self.registry = registry
        self.pool = pool

    def server_names(self) -> list[str]:
        return sorted(self.registry.servers)

    async def tool_schema(self, server: str, tool: str) -> dict[str, Any] | None:
        return await self.pool.tool_schema(server, tool)

    async def call_tool(
        self, server: str, tool: str, arguments: dict[str, Any], *, timeout: float | None = None
    ) -> Any:
        return await self.pool.call_tool(server, tool, arguments, timeout=timeout)


class Engine:
    """What the MCP tools call. Holds no business rules of the server's."""

    def __init__(
        self,
        settings: Settings,
        db: asyncpg.Pool,
        tools: Tools,
        owner: Agent,
        worker: Worker | None,
        scheduler: Scheduler | None = None,
    ) -> None:
        self.settings = settings
        self.db = db
        self.tools = tools
        self.owner = owner
        self.worker = worker
        self.scheduler = scheduler
        self.clock = utcnow
        self.event_limits = EventLimits(settings.max_event_bytes, settings.event_dedupe_seconds)

    async def publish_event(
        self, caller: Agent, *, topic: str, data: dict[str, Any], dedupe_key: str | None, source: str | None
    ) -> event_service.PublishedEvent:
        return await event_service.publish_event(
            self.db, caller, topic=topic, data=data, dedupe_key=dedupe_key, source=source, limits=self.event_limits
        )

    async def get_event(self, event_id: int) -> event_service.Event:
        return await event_service.get_event(self.db, event_id)

    async def list_events(
        self, *, topic: str | None, since: str | None, until: str | None, limit: int, cursor: str | None
    ) -> tuple[list[event_service.Event], str | None]:
        return await event_service.list_events(
            self.db, topic=topic, since=since, until=until, limit=limit, cursor=cursor
        )

    async def create_task(self, caller: Agent, arguments: dict[str, Any]) -> task_service.CreatedTask:
        return await task_service.create_task(self.db, self.tools, caller, arguments, clock=self.clock)

    async def get_task(self, task_id: UUID) -> Task:
        return await task_service.get_task(self.db, task_id)

    async def list_tasks(
        self, *, status: TaskStatus | None, schedule_kind: ScheduleKind | None, limit: int, cursor: str | None
    ) -> tuple[list[Task], str | None]:
        return await task_service.list_tasks(
            self.db, status=status, schedule_kind=schedule_kind, limit=limit, cursor=cursor
        )

    async def update_task(self, caller: Agent, task_id: UUID, changes: dict[str, Any]) -> lifecycle.TaskChange:
        return await lifecycle.update_task(self.db, self.tools, caller, task_id, changes, clock=self.clock)

    async def snooze(
        self, caller: Agent, task_id: UUID, *, seconds: float | None, until: str | None
    ) -> lifecycle.TaskChange:
        return await lifecycle.snooze(self.db, caller, task_id, seconds=seconds, until=until, clock=self.clock)

    async def pause_task(self, caller: Agent, task_id: UUID) -> lifecycle.TaskChange:
        return await lifecycle.pause_task(self.db, caller, task_id, clock=self.clock)

    async def resume_task(self, caller: Agent, task_id: UUID) -> lifecycle.TaskChange:
        return await lifecycle.resume_task(self.db, caller, task_id, clock=self.clock)

    async def cancel_task(self, caller: Agent, task_id: UUID, *, stop_running: bool = True) -> lifecycle.CancelledTask:
        return await lifecycle.cancel_task(self.db, caller, task_id, stop_running=stop_running, clock=self.clock)

    async def preview_schedule(
        self, schedule_kind: str, schedule_expr: str, timezone: str, *, count: int, after: str | None
    ) -> lifecycle.SchedulePreview:
        # Schedule math is bounded (schedule.HORIZON_YEARS, PREVIEW_BUDGET_SECONDS) yet can take a
        # moment for a rule whose fires are years apart: off the event loop, so nothing waits on it.
        return await asyncio.to_thread(
            lifecycle.preview_schedule,
            schedule_kind,
            schedule_expr,
            timezone,
            count=count,
            after=after,
            now=self.clock(),
        )

    async def run_now(self, caller: Agent, task_id: UUID) -> Run:
        row = await run_service.run_now(self.db, caller, task_id, clock=self.clock)
        return run_service.to_run(row)

    async def cancel_run(self, caller: Agent, run_id: UUID) -> Run:
        return await run_service.cancel_run(self.db, caller, run_id)

    async def get_run(self, run_id: UUID) -> Run:
        return await run_service.get_run(self.db, run_id)

    async def list_runs(
        self, *, task_id: UUID | None, status: RunStatus | None, limit: int, cursor: str | None
    ) -> tuple[list[Run], str | None]:
        return await run_service.list_runs(self.db, task_id=task_id, status=status, limit=limit, cursor=cursor)

    async def downstream_catalog(self, server: str | None) -> dict[str, Any]:
        """Every tool a pipeline step may use, per server, with schemas; built-ins under `pao`."""
        servers: list[dict[str, Any]] = []
        if server in (None, BUILTIN_SERVER):
            servers.append(
                {
                    "name": BUILTIN_SERVER,
                    "status": "ok",
                    "tools": [
                        {
                            "uses": f"pao.{name}",
                            "description": b.description,
                            "input_schema": b.input_schema,
                            "output_schema": None,
                        }
                        for name, b in sorted(BUILTINS.items())
                    ],
                }
            )
        if server != BUILTIN_SERVER:
            for name, listing in (await self.tools.pool.list_tools(server)).items():
                servers.append(
                    {
                        "name": name,
                        "status": "ok" if listing.ok else "error",
                        "error": None if listing.error is None else str(listing.error),
                        "tools": [
                            {
                                "uses": f"{name}.{t.name}",
                                "description": t.description,
                                "input_schema": t.input_schema,
                                "output_schema": t.output_schema,
                            }
                            for t in listing.tools
                        ],
                    }
                )
        return {"servers": servers}

    async def health(self) -> dict[str, Any]:
        async with self.db.acquire() as conn:
            queued_due, running = await run_store.queue_stats(conn)
            version = await schema_version(conn)
            waiting, oldest, relaying = await event_store.outbox_lag(conn)
        return {
            "database": "ok",
            "schema_version": version,
            "queued_due": queued_due,
            "running": running,
            "worker": self.worker.name if self.worker else None,
            "downstream_servers": self.tools.server_names(),
            "relay": {
                "redis": bool(self.settings.redis_url),
                "relay_running": relaying,
                "stream_out": self.settings.stream_out,
                "stream_in": self.settings.stream_in,
                "waiting": waiting,
                "oldest_seconds": oldest,
            },
        }


def _log_registry_source(settings: Settings, registry: Registry) -> None:
    """Say which mcp.json is used, or every path looked at: a client started elsewhere finds none."""
    candidates = settings.mcp_config_candidates()
    path = settings.mcp_config_path()
    if path.is_file():
        log.info("downstream servers from %s: %s", path, ", ".join(registry.names()) or "none")
    elif settings.mcp_config is not None:
        log.warning("PAO_MCP_CONFIG names %s, which does not exist: no downstream servers", path)
    else:
        log.info(
            "no mcp.json found (looked at %s; set PAO_MCP_CONFIG to name one): no downstream servers, "
            "pipelines can use only the built-in pao.* steps",
            ", ".join(str(c) for c in candidates),
        )


@asynccontextmanager
async def open_engine(
    settings: Settings,
    *,
    run_worker: bool = True,
    concurrency: int | None = None,
    run_scheduler: bool | None = None,
) -> AsyncIterator[Engine]:
    """Open the database (embedded when DATABASE_URL is unset), migrate, start the scheduler and the worker;
    stop all on exit. The scheduler runs wherever the worker does unless `run_scheduler` says otherwise."""
    async with AsyncExitStack() as stack:
        db, dsn = await stack.enter_async_context(
            # Runs in flight each hold a connection only briefly; a few more for the scheduler and the tools.
            open_database(
                settings.database_url,
                settings.data_dir,
                max_size=max(10, (concurrency or settings.worker_concurrency) + 4),
            )
        )
        async with db.acquire() as conn:
            await migrate(conn)
            owner = Agent.model_validate((await agent_store.ensure_owner(conn)).as_dict())
        registry = load_registry(settings.mcp_config_path())
        _log_registry_source(settings, registry)
        pool = await stack.enter_async_context(DownstreamPool(registry, environ=settings.environ))
        tools = Tools(registry, pool)
        worker: Worker | None = None
        background: list[asyncio.Task[None]] = []
        if run_worker:
            name = worker_name()
            renderer = Renderer(
                processes=settings.render_processes,
                timeout=settings.render_timeout_seconds,
                memory_mb=settings.render_memory_mb,
                limit=settings.max_value_bytes,
            )
            stack.push_async_callback(renderer.aclose)
            executor = Executor(
                db,
                tools,
                worker=name,
                secrets=settings.secret_environ(),
                renderer=renderer,
                max_value_bytes=settings.max_value_bytes,
                event_limits=EventLimits(settings.max_event_bytes, settings.event_dedupe_seconds),
            )
            worker = Worker(
                db,
                executor,
                name=name,
                concurrency=concurrency or settings.worker_concurrency,
                lease_seconds=settings.lease_seconds,
                dsn=dsn,
            )
            background.append(asyncio.create_task(worker.run(), name="worker"))
            matcher = Matcher(db, dsn=dsn)
            stack.push_async_callback(matcher.stop)
            background.append(asyncio.create_task(matcher.run(), name="matcher"))
            prober = Prober(db, tools, secrets=settings.secret_environ())
            stack.push_async_callback(prober.stop)
            background.append(asyncio.create_task(prober.run(), name="prober"))
            if settings.redis_url:
                relay = Relay(db, redis_url=settings.redis_url, stream=settings.stream_out, dsn=dsn)
                await relay.register()  # from here on every stored event enters the outbox
                ingest = Ingest(
                    db,
                    redis_url=settings.redis_url,
                    stream=settings.stream_in,
                    consumer=name,
                    limits=EventLimits(settings.max_event_bytes, settings.event_dedupe_seconds),
                    claim_idle_ms=int(settings.lease_seconds * 1000),
                )
                for loop, label in ((relay, "relay"), (ingest, "ingest")):
                    stack.push_async_callback(loop.stop)
                    background.append(asyncio.create_task(loop.run(), name=label))
        scheduler: Scheduler | None = None
        if run_worker if run_scheduler is None else run_scheduler:
            scheduler = Scheduler(db, dsn=dsn)
            background.append(asyncio.create_task(scheduler.run(), name="scheduler"))
        engine = Engine(settings, db, tools, owner, worker, scheduler)
        try:
            yield engine
        finally:
            if scheduler is not None:
                await scheduler.stop()
            if worker is not None:
                await worker.stop(settings.shutdown_grace_seconds)
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


async def migrate_database(settings: Settings) -> list[int]:
    """Apply pending migrations to the configured database (embedded when DATABASE_URL is unset)."""
    async with open_database(settings.database_url, settings.data_dir) as (db, _dsn), db.acquire() as conn:
        return await migrate(conn)
