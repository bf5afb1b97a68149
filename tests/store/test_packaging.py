"""The store reads what the package ships: migrations and SQL as package data, contract names filled in."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from pao_orchestrator import contracts
from pao_orchestrator.errors import PaoError
from pao_orchestrator.store import migrate
from pao_orchestrator.store.migrator import MIGRATIONS, discover
from pao_orchestrator.store.queries import names, sql


def test_migrations_are_read_from_the_installed_package() -> None:
    found = discover()
    assert [m.version for m in found] == list(range(1, len(found) + 1))
    assert found[0].name == "initial"
    assert "pao_orchestrator" in str(MIGRATIONS) or (Path(str(MIGRATIONS)) / "0001_initial.sql").is_file()


def test_a_folder_without_migrations_is_an_error_not_up_to_date(tmp_path: Path) -> None:
    with pytest.raises(PaoError, match="no migration found"):
        discover(tmp_path)


async def test_migrate_refuses_to_start_without_migrations_and_writes_nothing(
    database_url: str, tmp_path: Path
) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        before = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        with pytest.raises(PaoError, match="installation is incomplete"):
            await migrate(conn, tmp_path)
        assert await conn.fetchval("SELECT count(*) FROM schema_migrations") == before
    finally:
        await conn.close()


def test_sql_names_channels_only_through_the_contracts() -> None:
    texts = [sql(name) for name in names()]
    notifying = [text for text in texts if "pg_notify" in text]
    assert notifying, "some statements NOTIFY"
    for text in texts:
        assert "_CHANNEL" not in text, "every :NAME_CHANNEL placeholder is filled in"
    filled = " ".join(notifying)
    for channel in (contracts.RUNS_CHANNEL, contracts.CANCEL_CHANNEL, contracts.TASKS_CHANNEL):
        assert f"'{channel}'" in filled
