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
from pao_orchestrator.errors import PaoError
from pao_orchestrator.server.app import create_server, serve, serve_metrics

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
    settings: Settings, transport: str, host: str, port: int, metrics: tuple[str, int | None] = ("127.0.0.1", None)
) -> None:
    stop = asyncio.Event()
    _on_signals(stop)  # from the start: a signal during startup stops the server once it is up
    async with open_engine(settings) as engine, _metrics_endpoint(engine, *metrics):
        mcp = create_server(engine)
        server = asyncio.create_task(serve(mcp, transport, host=host, port=port, stop=stop))
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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    logs.configure(settings.log_level, settings.log_format, secrets=settings.secret_environ().values())
    try:
        if args.command == "serve":
            metrics = (args.metrics_host, args.metrics_port)
            asyncio.run(_serve(settings, args.transport, args.host, args.port, metrics))
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
