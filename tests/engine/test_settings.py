"""Where the downstream server registry (mcp.json) is looked for, and that the choice is logged."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from pao_orchestrator.engine.settings import Settings
from tests.engine.support import engine_on


@pytest.fixture
def elsewhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A working directory without mcp.json, and a user config dir of our own (XDG_CONFIG_HOME)."""
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("PAO_MCP_CONFIG", raising=False)
    return tmp_path


def write_registry(path: Path, like: Path | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(like.read_text() if like is not None else '{"mcpServers": {}}')
    return path


def test_mcp_json_lookup_order(elsewhere: Path) -> None:
    user = elsewhere / "config" / "pao" / "mcp.json"
    settings = Settings(data_dir=elsewhere / "data")
    # Nothing anywhere: the user config dir (platformdirs), never the data dir.
    assert settings.mcp_config_candidates() == [(elsewhere / "elsewhere" / "mcp.json").resolve(), user]
    assert settings.mcp_config_path() == user
    write_registry(user)
    assert settings.mcp_config_path() == user
    local = write_registry(elsewhere / "elsewhere" / "mcp.json")
    assert settings.mcp_config_path() == local.resolve()  # ./mcp.json beats the user config dir
    explicit = elsewhere / "explicit.json"
    assert Settings(mcp_config=explicit).mcp_config_path() == explicit  # PAO_MCP_CONFIG beats both
    assert Settings(mcp_config=explicit).mcp_config_candidates() == [explicit]


async def test_startup_logs_every_path_looked_at_when_no_mcp_json_is_found(
    database_url: str, elsewhere: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pao_orchestrator.engine")
    async with engine_on(database_url, None, elsewhere, run_worker=False):  # type: ignore[arg-type]
        pass
    text = caplog.text
    assert "no mcp.json found" in text
    assert str((elsewhere / "elsewhere" / "mcp.json").resolve()) in text
    assert str(elsewhere / "config" / "pao" / "mcp.json") in text


async def test_startup_logs_the_mcp_json_it_uses(
    database_url: str, elsewhere: Path, mcp_config: Path, caplog: pytest.LogCaptureFixture
) -> None:
    user = write_registry(elsewhere / "config" / "pao" / "mcp.json", mcp_config)
    caplog.set_level(logging.INFO, logger="pao_orchestrator.engine")
    async with engine_on(database_url, None, elsewhere, run_worker=False):  # type: ignore[arg-type]
        pass
    assert f"downstream servers from {user}: time" in caplog.text
