"""The engine as one object: database, downstream pool, worker and scheduler, started and stopped together.

`open_engine` is what `pao serve` and `pao worker` (and tests) enter. The MCP
layer calls the Engine's methods and nothing below them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import asyncpg

from pao_orchestrator.contracts import BUILTIN_SERVER
from pao_orchestrator.engine import agents as agent_service
from pao_orchestrator.engine import audit, lifecycle, templating
from pao_orchestrator.engine import events as event_service
from pao_orchestrator.engine import runs as run_service
from pao_orchestrator.engine import tasks as task_service
from pao_orchestrator.engine.changes import Change, ChangeFeed
from pao_orchestrator.engine.downstream import DownstreamPool, Registry, load_registry
from pao_orchestrator.engine.models import Agent, AgentInfo, AuditEntry, Run, RunStep, RunSummary, Task
from pao_orchestrator.engine.runtime import (
    BUILTINS,
    EventLimits,
    Executor,
    Ingest,
    Matcher,
    Prober,
    Pruner,
    Relay,
    Renderer,
    RetentionPolicy,
    Scheduler,
    Worker,
    worker_name,
)
from pao_orchestrator.engine.settings import Settings
from pao_orchestrator.metrics import Metrics
from pao_orchestrator.store import DATABASE_ERRORS, migrate, open_database, schema_version
from pao_orchestrator.store import agents as agent_store
from pao_orchestrator.store import events as event_store
from pao_orchestrator.store import runs as run_store
from pao_orchestrator.vocabulary import AuditOutcome, ChangeKind, RunStatus, ScheduleKind, StepStatus, TaskStatus

log = logging.getLogger(__name__)

MAX_WAIT_SECONDS = 60.0
"""The longest run_now and get_run wait for a run to finish (a tool call should not hang forever)."""
FINISHED_STEP = frozenset({StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.CANCELLED, StepStatus.SKIPPED})
# While a run is waited for, it is re-read at least this often, in case a notification was lost
# (the LISTEN connection is re-made after a Postgres restart).
WAIT_RECHECK_SECONDS = 5.0
StepReport = Callable[[RunStep, int, int], Awaitable[None]]


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
        metrics: Metrics | None = None,
        pruner: Pruner | None = None,
        changes: ChangeFeed | None = None,
    ) -> None:
        self.pruner = pruner
        self.settings = settings
        self.metrics = metrics or Metrics()
        self.changes = changes
        self.db = db
        self.tools = tools
        self.owner = owner
        self.worker = worker
        self.scheduler = scheduler
        self.clock = utcnow
        self.denied = audit.DeniedThrottle()
        self.event_limits = EventLimits(settings.max_event_bytes, settings.event_dedupe_seconds)

    async def publish_event(
        self, caller: Agent, *, topic: str, data: dict[str, Any], dedupe_key: str | None, source: str | None
    ) -> event_service.PublishedEvent:
        return await event_service.publish_event(
            self.db, caller, topic=topic, data=data, dedupe_key=dedupe_key, source=source, limits=self.event_limits
        )

    async def get_event(self, caller: Agent, event_id: int) -> event_service.Event:
        return await event_service.get_event(self.db, caller, event_id)

    async def list_events(
        self,
        caller: Agent,
        *,
        topic: str | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[event_service.Event], str | None]:
        return await event_service.list_events(
            self.db, caller, topic=topic, since=since, until=until, limit=limit, cursor=cursor
        )

    async def create_task(self, caller: Agent, arguments: dict[str, Any]) -> task_service.CreatedTask:
        return await task_service.create_task(self.db, self.tools, caller, arguments, clock=self.clock)

    async def get_task(self, caller: Agent, task_id: UUID) -> Task:
        return await task_service.get_task(self.db, caller, task_id)

    async def list_tasks(
        self,
        caller: Agent,
        *,
        status: TaskStatus | None = None,
        schedule_kind: ScheduleKind | None = None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[Task], str | None]:
        return await task_service.list_tasks(
            self.db, caller, status=status, schedule_kind=schedule_kind, limit=limit, cursor=cursor
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

    async def get_run(self, caller: Agent, run_id: UUID) -> Run:
        return await run_service.get_run(self.db, caller, run_id)

    async def get_step(self, caller: Agent, run_id: UUID, step_id: str) -> RunStep:
        return await run_service.get_step(self.db, caller, run_id, step_id)

    async def wait_for_run(
        self,
        caller: Agent,
        run_id: UUID,
        *,
        timeout: float,
        on_step: StepReport | None = None,
    ) -> Run:
        """The run once it has left queued and running, or as it is after `timeout` seconds (at most
        MAX_WAIT_SECONDS). `on_step(step, finished, total)` is awaited once per step that finishes
        meanwhile. Woken by the change feed, not by polling."""
        if self.changes is None:
            raise RuntimeError("this engine was opened without a change feed")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + min(max(timeout, 0.0), MAX_WAIT_SECONDS)
        changed = asyncio.Event()

        def on_change(change: Change) -> None:
            if change.id == run_id and change.kind in (ChangeKind.RUN, ChangeKind.STEP):
                changed.set()

        unsubscribe = self.changes.subscribe(on_change)
        reported: set[tuple[int, int]] = set()
        total: int | None = None
        try:
            await self.changes.ready(timeout=max(0.0, deadline - loop.time()))
            while True:
                changed.clear()
                run = await self.get_run(caller, run_id)
                if on_step is not None:
                    if total is None:
                        task = await self.get_task(caller, run.task_id)
                        total = len(task.payload.get("pipeline", []))
                    for step in run.steps:
                        key = (step.attempt, step.step_index)
                        if step.status in FINISHED_STEP and key not in reported:
                            reported.add(key)
                            await on_step(step, len(reported), total)
                remaining = deadline - loop.time()
                if run.status not in (RunStatus.QUEUED, RunStatus.RUNNING) or remaining <= 0:
                    return run
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(remaining, WAIT_RECHECK_SECONDS))
        finally:
            unsubscribe()

    async def list_runs(
        self,
        caller: Agent,
        *,
        task_id: UUID | None = None,
        status: RunStatus | None = None,
        limit: int,
        cursor: str | None,
    ) -> tuple[list[RunSummary], str | None]:
        return await run_service.list_runs(self.db, caller, task_id=task_id, status=status, limit=limit, cursor=cursor)

    # ----------------------------------------------------------------- agents, tokens and audit

    async def authenticate(self, token: str) -> Agent | None:
        """The live agent a usable bearer token belongs to, or None."""
        return await agent_service.authenticate(self.db, token)

    async def create_agent(
        self,
        caller: Agent,
        *,
        name: str,
        scopes: list[str],
        description: str = "",
        expires_in_seconds: int | None = None,
    ) -> agent_service.CreatedAgent:
        return await agent_service.create_agent(
            self.db,
            caller,
            name=name,
            scopes=scopes,
            description=description,
            expires_in_seconds=expires_in_seconds,
            now=self.clock(),
        )

    async def get_agent(self, caller: Agent, agent_id: UUID) -> AgentInfo:
        return await agent_service.get_agent(self.db, caller, agent_id, now=self.clock())

    async def list_agents(
        self, caller: Agent, *, include_deleted: bool = False, limit: int = 50, cursor: str | None = None
    ) -> tuple[list[AgentInfo], str | None]:
        return await agent_service.list_agents(
            self.db, caller, include_deleted=include_deleted, limit=limit, cursor=cursor, now=self.clock()
        )

    async def update_agent(
        self,
        caller: Agent,
        agent_id: UUID,
        *,
        name: str | None = None,
        scopes: list[str] | None = None,
        description: str | None = None,
        new_token: bool = False,
        expires_in_seconds: int | None = None,
        revoke_token_id: UUID | None = None,
    ) -> agent_service.UpdatedAgent:
        return await agent_service.update_agent(
            self.db,
            caller,
            agent_id,
            name=name,
            scopes=scopes,
            description=description,
            issue_token=new_token,
            expires_in_seconds=expires_in_seconds,
            revoke_token_id=revoke_token_id,
            now=self.clock(),
        )

    async def delete_agent(self, caller: Agent, agent_id: UUID) -> AgentInfo:
        return await agent_service.delete_agent(self.db, caller, agent_id, now=self.clock())

    async def revoke(self, caller: Agent, target: UUID) -> str:
        """Revoke a token by its id, or an agent and all its tokens by the agent's id."""
        return await agent_service.revoke(self.db, caller, target, now=self.clock())

    async def list_audit(
        self,
        caller: Agent,
        *,
        agent_id: UUID | None = None,
        action: str | None = None,
        target_type: str | None = None,
        target_id: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        limit: int = 50,
        cursor: str | None = None,
    ) -> tuple[list[AuditEntry], str | None]:
        return await audit.list_audit(
            self.db,
            caller,
            agent_id=agent_id,
            action=action,
            target_type=target_type,
            target_id=target_id,
            since=since,
            until=until,
            limit=limit,
            cursor=cursor,
        )

    async def audit_denied(
        self, caller: Agent | None, action: str, target_type: str, target_id: str | None, reason: str
    ) -> None:
        """Record a failed authentication or authorization (never with the token that was offered); a
        refusal repeated within seconds is counted into the next entry instead (audit.DeniedThrottle)."""
        left_out = self.denied.admit((caller.id if caller is not None else None, action, target_type, reason))
        if left_out is None:
            return
        details: dict[str, Any] = {"reason": reason, **({"repeated": left_out} if left_out else {})}
        await audit.record(self.db, caller, action, target_type, target_id, details, outcome=AuditOutcome.DENIED)

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

    async def metrics_exposition(self) -> bytes:
        """The Prometheus text of this process, with the queue gauges read from the database now."""
        try:
            async with self.db.acquire() as conn:
                queued_due, running, oldest = await run_store.queue_metrics(conn)
                _waiting, relay_lag, _relaying = await event_store.outbox_lag(conn)
        except DATABASE_ERRORS as exc:
            log.warning("metrics: the queue could not be read (%s)", exc)
        else:
            self.metrics.queue_depth.set(queued_due)
            self.metrics.running.set(running)
            self.metrics.oldest_due_age.set(oldest)
            self.metrics.relay_lag.set(relay_lag or 0.0)
        return self.metrics.exposition()

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
    # Before anything starts: a secret too short to mask safely is refused, naming it.
    templating.check_secrets(settings.secret_environ())
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
        metrics = Metrics()
        pool = await stack.enter_async_context(
            DownstreamPool(registry, environ=settings.environ, metrics=metrics, log_stderr=True)
        )
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
                metrics=metrics,
                event_limits=EventLimits(settings.max_event_bytes, settings.event_dedupe_seconds),
            )
            worker = Worker(
                db,
                executor,
                name=name,
                concurrency=concurrency or settings.worker_concurrency,
                lease_seconds=settings.lease_seconds,
                dsn=dsn,
                metrics=metrics,
            )
            background.append(asyncio.create_task(worker.run(), name="worker"))
            matcher = Matcher(db, dsn=dsn)
            stack.push_async_callback(matcher.stop)
            background.append(asyncio.create_task(matcher.run(), name="matcher"))
            prober = Prober(db, tools, secrets=settings.secret_environ())
            stack.push_async_callback(prober.stop)
            background.append(asyncio.create_task(prober.run(), name="prober"))
            if settings.redis_url:
                relay = Relay(
                    db,
                    redis_url=settings.redis_url,
                    stream=settings.stream_out,
                    dsn=dsn,
                    maxlen=settings.stream_out_maxlen,
                )
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
            scheduler = Scheduler(db, dsn=dsn, metrics=metrics)
            background.append(asyncio.create_task(scheduler.run(), name="scheduler"))
        pruner: Pruner | None = None
        if run_worker:
            pruner = Pruner(db, retention_policy(settings), metrics=metrics)
            background.append(asyncio.create_task(pruner.run(), name="retention"))
        changes = ChangeFeed(dsn)
        stack.push_async_callback(changes.aclose)
        engine = Engine(settings, db, tools, owner, worker, scheduler, metrics, pruner, changes)
        try:
            yield engine
        finally:
            if pruner is not None:
                await pruner.stop()
            if scheduler is not None:
                await scheduler.stop()
            if worker is not None:
                await worker.stop(settings.shutdown_grace_seconds)
            for task in background:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task


def retention_policy(settings: Settings) -> RetentionPolicy:
    return RetentionPolicy(
        runs_days=settings.retention_runs_days,
        events_days=settings.retention_events_days,
        audit_days=settings.retention_audit_days,
        batch_size=settings.retention_batch_size,
        interval_seconds=settings.retention_interval_seconds,
    )


async def migrate_database(settings: Settings) -> list[int]:
    """Apply pending migrations to the configured database (embedded when DATABASE_URL is unset)."""
    async with open_database(settings.database_url, settings.data_dir) as (db, _dsn), db.acquire() as conn:
        return await migrate(conn)
