"""`pao`: serve the MCP server, run workers, migrate, check the setup.

Logs go to stderr: over stdio, stdout carries nothing but the protocol.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import AsyncIterator, Sequence
from uuid import UUID

from pao_orchestrator import __version__, logs
from pao_orchestrator.engine import (
    CheckStatus,
    Engine,
    Settings,
    diagnose,
    migrate_database,
    open_engine,
    render_checks,
)
from pao_orchestrator.errors import ConfigurationError, PaoError
from pao_orchestrator.process import settle_heap
from pao_orchestrator.server.app import WebOptions, create_server, serve, serve_metrics
from pao_orchestrator.server.http import check_bind
from pao_orchestrator.vocabulary import Scope

log = logging.getLogger("pao")


def _on_signals(stop: asyncio.Event) -> None:
    """SIGINT and SIGTERM set `stop` (where the loop supports signal handlers)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)


async def _until_signal(stop: asyncio.Event) -> None:
    _on_signals(stop)
    await stop.wait()


@contextlib.asynccontextmanager
async def _metrics_endpoint(engine: Engine, host: str, port: int | None) -> AsyncIterator[None]:
    """Serve /metrics on `port` while the body runs (nothing when no port is given)."""
    if port is None:
        yield
        return
    stop = asyncio.Event()
    task = asyncio.create_task(serve_metrics(engine, host=host, port=port, stop=stop))
    log.info("metrics on http://%s:%d/metrics", host, port)
    try:
        yield
    finally:
        stop.set()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=5)


async def _serve(
    settings: Settings, transport: str, web: WebOptions, metrics: tuple[str, int | None] = ("127.0.0.1", None)
) -> None:
    stop = asyncio.Event()
    _on_signals(stop)  # from the start: a signal during startup stops the server once it is up
    if transport != "stdio":
        check_bind(web.host, auth=web.auth, insecure=web.insecure)  # before opening anything
    async with open_engine(settings) as engine, _metrics_endpoint(engine, *metrics):
        caller = None
        if transport == "stdio" and settings.token:
            caller = await engine.authenticate(settings.token)
            if caller is None:
                raise ConfigurationError(
                    "PAO_TOKEN is not a usable token (unknown, revoked or expired); unset it to act as the "
                    "local owner, or create one with: pao agents create --name N --scopes a,b"
                )
            log.info("stdio session acts as agent %r (PAO_TOKEN)", caller.name)
        mcp = create_server(
            engine,
            caller=caller,
            web=web if transport != "stdio" else None,
            caller_token=settings.token if caller is not None else None,
        )
        server = asyncio.create_task(
            serve(mcp, transport, host=web.host, port=web.port, stop=stop, engine=engine, web=web)
        )
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({server, stopping}, return_when=asyncio.FIRST_COMPLETED)
        stopping.cancel()
        if not server.done():
            log.info("stopping: closing the %s transport", transport)
            # The transport was asked to finish; past the grace period it is cancelled.
            _, pending = await asyncio.wait({server}, timeout=settings.shutdown_grace_seconds)
            if pending:
                log.warning(
                    "the %s transport did not stop within %.1fs; cancelling it",
                    transport,
                    settings.shutdown_grace_seconds,
                )
                server.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await server
        if not server.cancelled() and server.exception() is not None:
            raise server.exception()  # type: ignore[misc]


async def _agents(settings: Settings, args: argparse.Namespace) -> None:
    """`pao agents create|list|revoke`, acting as the local owner (whoever can run pao on this host)."""
    async with open_engine(settings, run_worker=False, run_scheduler=False) as engine:
        owner = engine.owner
        if args.agents_command == "create":
            scopes = [s.strip() for s in args.scopes.split(",") if s.strip()]
            created = await engine.create_agent(
                owner,
                name=args.name,
                scopes=scopes,
                description=args.description,
                expires_in_seconds=args.expires_in,
            )
            print(f"agent {created.agent.name} ({created.agent.id}) scopes: {', '.join(created.agent.scopes)}")
            print(f"token (shown once; pao keeps only a hash): {created.token}")
        elif args.agents_command == "list":
            cursor: str | None = None
            print(f"{'id':36}  {'name':20}  {'state':8}  {'tokens':6}  scopes")
            while True:
                agents, cursor = await engine.list_agents(owner, include_deleted=args.all, limit=200, cursor=cursor)
                for agent in agents:
                    state = "deleted" if agent.deleted_at else "revoked" if agent.revoked_at else "active"
                    active = sum(1 for t in agent.tokens if t.active)
                    print(f"{agent.id!s:36}  {agent.name:20}  {state:8}  {active:6}  {', '.join(agent.scopes)}")
                if cursor is None:
                    break
        elif args.agents_command == "revoke":
            try:
                target = UUID(args.id)
            except ValueError:
                raise ConfigurationError(f"{args.id!r} is not an id; pao agents list shows them") from None
            print(await engine.revoke(owner, target))


async def _worker(
    settings: Settings, concurrency: int | None, metrics: tuple[str, int | None] = ("127.0.0.1", None)
) -> None:
    async with open_engine(settings, concurrency=concurrency) as engine, _metrics_endpoint(engine, *metrics):
        assert engine.worker is not None
        log.info(
            "worker %s running (concurrency %d)",
            engine.worker.name,
            concurrency or settings.worker_concurrency,
        )
        await _until_signal(asyncio.Event())
        log.info("stopping: finishing running steps, releasing the rest")


async def _doctor(settings: Settings) -> int:
    checks = await diagnose(settings)
    print(render_checks(checks))
    return 1 if any(c.status == CheckStatus.FAIL for c in checks) else 0


async def _migrate(settings: Settings) -> None:
    applied = await migrate_database(settings)
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "database is up to date")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pao", description="Personal Agent Orchestrator")
    parser.add_argument("--version", action="version", version=f"pao {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the MCP server with its scheduler and workers")
    p_serve.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_serve.add_argument(
        "--no-auth",
        action="store_true",
        help="http/sse: no bearer tokens; every caller is the local owner (loopback only unless --insecure)",
    )
    p_serve.add_argument(
        "--insecure", action="store_true", help="allow --no-auth on a non-loopback address (a trusted network)"
    )
    p_serve.add_argument(
        "--allowed-origin",
        action="append",
        default=[],
        metavar="ORIGIN",
        help="also accept requests with this Origin header (e.g. https://app.example); repeatable",
    )
    p_serve.add_argument(
        "--allowed-host",
        action="append",
        default=[],
        metavar="HOST",
        help="also accept this Host header (a name the server is reached by); repeatable",
    )
    p_serve.add_argument(
        "--public-url", default=None, help="the URL clients reach the server at, for the OAuth resource metadata"
    )
    p_worker = sub.add_parser("worker", help="run only the scheduler and workers")
    p_worker.add_argument("--concurrency", type=int, default=None)
    for p in (p_serve, p_worker):
        p.add_argument(
            "--metrics-port",
            type=int,
            default=None,
            help="serve Prometheus metrics at http://<metrics-host>:<port>/metrics (http/sse serve has /metrics too)",
        )
        p.add_argument("--metrics-host", default="127.0.0.1")
    sub.add_parser("migrate", help="apply database migrations and exit")
    sub.add_parser("doctor", help="check the database, Redis and every downstream server; exit 1 if any fails")
    p_agents = sub.add_parser("agents", help="manage agents and their bearer tokens")
    agents_sub = p_agents.add_subparsers(dest="agents_command", required=True)
    p_create = agents_sub.add_parser("create", help="create an agent and print its token once")
    p_create.add_argument("--name", required=True)
    p_create.add_argument("--scopes", required=True, help="comma-separated: " + ", ".join(s.value for s in Scope))
    p_create.add_argument("--description", default="")
    p_create.add_argument("--expires-in", type=int, default=None, metavar="SECONDS", help="token lifetime")
    p_list = agents_sub.add_parser("list", help="list agents")
    p_list.add_argument("--all", action="store_true", help="include deleted agents")
    p_revoke = agents_sub.add_parser("revoke", help="revoke a token (its id) or an agent and all its tokens")
    p_revoke.add_argument("id")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secret_environ().values())
    settle_heap()
    try:
        if args.command == "serve":
            web = WebOptions(
                transport=args.transport,
                host=args.host,
                port=args.port,
                auth=not args.no_auth,
                insecure=args.insecure,
                allowed_hosts=tuple(args.allowed_host),
                allowed_origins=tuple(args.allowed_origin),
                public_url=args.public_url,
                header_timeout=settings.header_timeout_seconds,
            )
            asyncio.run(_serve(settings, args.transport, web, (args.metrics_host, args.metrics_port)))
        elif args.command == "agents":
            asyncio.run(_agents(settings, args))
        elif args.command == "worker":
            asyncio.run(_worker(settings, args.concurrency, (args.metrics_host, args.metrics_port)))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
        elif args.command == "doctor":
            return asyncio.run(_doctor(settings))
    except PaoError as exc:
        print(f"pao: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
