"""Apply the migrations shipped in `pao_orchestrator.migrations` (NNNN_name.sql) in order, each exactly once.

They are package data, read with `importlib.resources`, so a wheel migrates
exactly as a work tree does. Finding none is a packaging error, not "up to date".

Two processes starting together are safe: the runner holds a session advisory
lock while it reads what ran and applies what did not, so the second process
waits and then finds nothing to do.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from importlib.resources import files
from importlib.resources.abc import Traversable

import asyncpg

from pao_orchestrator.errors import PaoError
from pao_orchestrator.store.queries import fill_contracts

log = logging.getLogger(__name__)

MIGRATIONS: Traversable = files("pao_orchestrator.migrations")
_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Arbitrary constant: "pao" in ASCII, the key of the migration advisory lock.
_LOCK_KEY = 0x70616F


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def discover(directory: Traversable = MIGRATIONS) -> list[Migration]:
    """The migration files in version order; none at all, a gap or a stray name is a packaging bug."""
    found: list[Migration] = []
    for path in sorted((p for p in directory.iterdir() if p.name.endswith(".sql")), key=lambda p: p.name):
        match = _NAME.match(path.name)
        if not match:
            raise PaoError(f"migration file {path.name!r} does not match NNNN_name.sql")
        found.append(Migration(int(match.group(1)), match.group(2), path.read_text(encoding="utf-8")))
    if not found:
        raise PaoError(
            f"no migration found in {directory}: the installation is incomplete (the package ships "
            "its migrations as NNNN_name.sql files); reinstall pao-orchestrator"
        )
    for expected, migration in enumerate(found, start=1):
        if migration.version != expected:
            raise PaoError(f"migrations must be numbered 0001, 0002, ... without gaps; found {migration.version:04d}")
    return found


async def migrate(conn: asyncpg.Connection, directory: Traversable = MIGRATIONS) -> list[int]:
    """Apply pending migrations; return the versions applied now."""
    migrations = discover(directory)
    await conn.execute("SELECT pg_advisory_lock($1)", _LOCK_KEY)
    try:
        await conn.execute(
            """CREATE TABLE IF NOT EXISTS schema_migrations (
                   version integer PRIMARY KEY,
                   name text NOT NULL,
                   checksum text NOT NULL,
                   applied_at timestamptz NOT NULL DEFAULT now())"""
        )
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations")
        applied = {r["version"]: r["checksum"] for r in rows}
        done: list[int] = []
        for migration in migrations:
            if migration.version in applied:
                if applied[migration.version] != migration.checksum:
                    log.warning(
                        "migration %04d_%s changed after it was applied; migrations are append-only",
                        migration.version,
                        migration.name,
                    )
                continue
            async with conn.transaction():
                await conn.execute(fill_contracts(migration.sql))
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
            log.info("applied migration %04d_%s", migration.version, migration.name)
            done.append(migration.version)
        return done
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _LOCK_KEY)


async def schema_version(conn: asyncpg.Connection) -> int | None:
    """The newest migration applied to this database (None before the first)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    return await conn.fetchval("SELECT max(version) FROM schema_migrations")  # type: ignore[no-any-return]


def latest_version(directory: Traversable = MIGRATIONS) -> int:
    """The newest migration this installation ships."""
    return discover(directory)[-1].version
