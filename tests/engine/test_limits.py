"""Documented size limits, each refused with the field and the limit; a short secret stops start-up."""

from __future__ import annotations

from pathlib import Path

import pytest

from pao_orchestrator.contracts import MAX_PAYLOAD_CHARS, MAX_STEP_ARGUMENTS_CHARS, MAX_TITLE_CHARS
from pao_orchestrator.errors import ConfigurationError, InvalidArgument
from tests.engine.support import engine_on, task_args


async def test_an_engine_refuses_to_start_with_a_short_secret(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError, match="PAO_SECRET_PIN: a secret must be at least 8"):
        async with engine_on(database_url, fx_config, tmp_path, environ={"PAO_SECRET_PIN": "1234"}):
            pass


async def test_sizes_are_refused_naming_the_field_and_nothing_is_written(
    database_url: str, fx_config: Path, tmp_path: Path
) -> None:
    noop = {"id": "a", "uses": "pao.noop", "with": {}}
    big_with = {"id": "a", "uses": "pao.noop", "with": {"v": "x" * MAX_STEP_ARGUMENTS_CHARS}}
    many = [{"id": f"s{i}", "uses": "pao.noop", "with": {"v": "x" * 60_000}} for i in range(5)]
    cases = {
        "title": (task_args([noop], title="t" * (MAX_TITLE_CHARS + 1)), f"at most {MAX_TITLE_CHARS} characters"),
        "payload.pipeline[0].with": (task_args([big_with]), "the limit of a step's 'with'"),
        "payload": (task_args(many), f"larger than {MAX_PAYLOAD_CHARS:,} characters of JSON"),
    }
    async with engine_on(database_url, fx_config, tmp_path, run_worker=False) as engine:
        for field, (arguments, message) in cases.items():
            with pytest.raises(InvalidArgument) as refused:
                await engine.create_task(engine.owner, arguments)
            assert refused.value.field == field, str(refused.value)
            assert message in str(refused.value)
        async with engine.db.acquire() as conn:
            assert await conn.fetchval("SELECT count(*) FROM tasks") == 0
