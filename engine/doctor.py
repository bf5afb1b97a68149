"""`pao doctor`: is everything pao needs there and working? The database, Redis, each downstream server.

Every check is timed and ends `ok`, `fail` or `skip`, with one line saying what
was found or what is wrong; `pao doctor` prints them as a table and exits 1 when
any failed. Nothing is changed: the database is not migrated, no task is touched.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum

from pao_orchestrator.engine.downstream import DownstreamPool, load_registry
from pao_orchestrator.engine.settings import Settings
from pao_orchestrator.errors import PaoError
from pao_orchestrator.store import diagnostics, latest_version, open_database, schema_version

CHECK_TIMEOUT = 30.0


class CheckStatus(StrEnum):
    OK = "ok"
    FAIL = "fail"
    SKIP = "skip"


@dataclass
class Check:
    """One line of the doctor's table."""

    name: str
    status: CheckStatus
    detail: str
    seconds: float | None = None


async def _timed(name: str, probe: Callable[[], Awaitable[tuple[CheckStatus, str]]]) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            status, detail = await probe()
    except TimeoutError:
        status, detail = CheckStatus.FAIL, f"no answer within {CHECK_TIMEOUT:g}s"
    except Exception as exc:  # a check reports, it does not raise
        status, detail = CheckStatus.FAIL, str(exc) if isinstance(exc, PaoError) else f"{type(exc).__name__}: {exc}"
    return Check(name, status, " ".join(detail.split()), time.perf_counter() - started)


async def _database(settings: Settings) -> list[Check]:
    where = "DATABASE_URL" if settings.database_url else f"embedded Postgres under {settings.data_dir / 'pgdata'}"
    checks: list[Check] = []

    async def probe() -> tuple[CheckStatus, str]:
        async with open_database(settings.database_url, settings.data_dir, max_size=2) as (db, _dsn):
            async with db.acquire() as conn:
                version, name = await diagnostics.server_version(conn)
                applied = await schema_version(conn)
            shipped = latest_version()
            if applied == shipped:
                migrations = Check("migrations", CheckStatus.OK, f"current (version {applied})")
            elif applied is None or applied < shipped:
                migrations = Check(
                    "migrations",
                    CheckStatus.FAIL,
                    f"database at version {applied or 0}, this pao ships {shipped}: run `pao migrate`",
                )
            else:
                migrations = Check(
                    "migrations",
                    CheckStatus.FAIL,
                    f"database at version {applied}, newer than this pao ({shipped}): upgrade pao",
                )
            checks.append(migrations)
        return CheckStatus.OK, f"PostgreSQL {version}, database {name!r} ({where})"

    reached = await _timed("database", probe)
    if reached.status != CheckStatus.OK:
        return [reached, Check("migrations", CheckStatus.SKIP, "the database was not reached")]
    return [reached, *checks]


async def _redis(settings: Settings) -> Check:
    if not settings.redis_url:
        return Check("redis", CheckStatus.SKIP, "REDIS_URL is not set (Redis is optional)")

    async def probe() -> tuple[CheckStatus, str]:
        url = settings.redis_url
        assert url is not None
        try:
            state = await diagnostics.redis_state(url, [settings.stream_out, settings.stream_in])
        except diagnostics.RedisUnavailable as exc:
            return CheckStatus.FAIL, str(exc)
        parts = []
        for stream in state.streams:
            if not stream.exists:
                parts.append(f"{stream.name}: empty")
                continue
            groups = ", ".join(
                f"group {g['name']} ({g['consumers']} consumer(s), {g['pending']} pending, lag {g['lag']})"
                for g in stream.groups
            )
            parts.append(f"{stream.name}: {stream.length} entries, last {stream.last_id}; {groups or 'no group'}")
        return CheckStatus.OK, f"Redis {state.version}; " + "; ".join(parts)

    return await _timed("redis", probe)


async def _downstream(settings: Settings) -> list[Check]:
    path = settings.mcp_config_path()
    try:
        registry = load_registry(path)
    except PaoError as exc:
        return [Check("mcp.json", CheckStatus.FAIL, f"{path}: {exc}")]
    names = registry.names()
    if not path.is_file():
        looked = ", ".join(str(c) for c in settings.mcp_config_candidates())
        return [Check("mcp.json", CheckStatus.SKIP, f"none found (looked at {looked}); only pao.* steps can run")]
    checks = [Check("mcp.json", CheckStatus.OK, f"{path}: {len(names)} server(s)")]
    async with DownstreamPool(
        registry, environ=settings.environ, connect_timeout=CHECK_TIMEOUT - 5, log_stderr=True
    ) as pool:

        async def one(name: str) -> Check:
            async def probe() -> tuple[CheckStatus, str]:
                listing = (await pool.list_tools(name))[name]
                if listing.error is not None:
                    return CheckStatus.FAIL, str(listing.error)
                tools = ", ".join(t.name for t in listing.tools[:8])
                more = f" (+{len(listing.tools) - 8})" if len(listing.tools) > 8 else ""
                return CheckStatus.OK, f"{len(listing.tools)} tool(s): {tools}{more}"

            return await _timed(f"server {name}", probe)

        checks += await asyncio.gather(*(one(name) for name in names))
    return checks


async def diagnose(settings: Settings) -> list[Check]:
    """Every check, the database's first; downstream servers are started and listed concurrently."""
    database, redis, downstream = await asyncio.gather(_database(settings), _redis(settings), _downstream(settings))
    return [*database, redis, *downstream]


def render_checks(checks: list[Check]) -> str:
    """The doctor's table, for a terminal."""
    rows = [("check", "status", "time", "detail")]
    for c in checks:
        rows.append((c.name, c.status.value, "" if c.seconds is None else f"{c.seconds * 1000:.0f} ms", c.detail))
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    lines = [f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}  {r[3]}" for r in rows]
    failed = sum(1 for c in checks if c.status == CheckStatus.FAIL)
    lines.append(f"{failed} check(s) failed" if failed else "all checks passed")
    return "\n".join(lines)
