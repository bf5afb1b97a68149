"""The one settings object, read from the environment once and passed down."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs
from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pao_orchestrator.contracts import APP_NAME, SECRET_ENV_PREFIX
from pao_orchestrator.logs import LogFormat


def _default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))


def _environment() -> dict[str, str]:
    return dict(os.environ)


def _user_config_dir() -> Path:
    return Path(platformdirs.user_config_dir("pao", appauthor=False))


class Settings(BaseSettings):
    """Everything configurable; names are the contract in DESIGN.md."""

    model_config = SettingsConfigDict(env_prefix="PAO_", extra="ignore", populate_by_name=True)

    database_url: str | None = Field(default=None, validation_alias=AliasChoices("DATABASE_URL"))
    redis_url: str | None = Field(default=None, validation_alias=AliasChoices("REDIS_URL"))
    data_dir: Path = Field(default_factory=_default_data_dir)
    mcp_config: Path | None = None
    token: str | None = None
    lease_seconds: float = Field(default=30.0, gt=0)
    shutdown_grace_seconds: float = Field(default=10.0, ge=0)
    stream_out: str = "pao:events"
    stream_in: str = "pao:inbox"
    stream_out_maxlen: int = Field(
        default=1_000_000,
        ge=0,
        description="Keep about this many entries in the outgoing stream (XADD MAXLEN ~); 0: never trim.",
    )
    worker_concurrency: int = Field(default=16, ge=1)
    render_processes: int = Field(default=2, ge=1, le=64)
    render_timeout_seconds: float = Field(default=1.0, gt=0, le=60)
    render_memory_mb: int = Field(default=256, ge=32, le=65_536)
    max_value_bytes: int = Field(default=1_048_576, ge=1024, le=256 * 1_048_576)
    retention_runs_days: float = Field(default=30.0, ge=0, description="Keep finished runs this long; 0: forever.")
    retention_events_days: float = Field(default=30.0, ge=0)
    retention_audit_days: float = Field(default=365.0, ge=0)
    retention_batch_size: int = Field(default=1000, ge=1, le=100_000)
    retention_interval_seconds: float = Field(default=3600.0, gt=0)
    header_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    max_event_bytes: int = Field(default=65_536, ge=1024, le=16 * 1_048_576)
    event_dedupe_seconds: float = Field(default=86_400.0, gt=0, le=31_536_000)
    log_level: str = "INFO"
    log_format: LogFormat | None = Field(
        default=None, description="json or text; unset: json when stderr is not a terminal, text when it is."
    )
    environ: dict[str, str] = Field(
        default_factory=_environment,
        exclude=True,
        repr=False,
        description="The process environment, read once: downstream servers inherit it (minus our secrets), "
        "`${env:NAME}` in mcp.json and `${secrets.NAME}` in pipelines resolve in it.",
    )

    def secret_environ(self) -> dict[str, str]:
        """The `PAO_SECRET_*` variables: the only source of `${secrets.NAME}`."""
        return {key: value for key, value in self.environ.items() if key.startswith(SECRET_ENV_PREFIX)}

    def mcp_config_candidates(self) -> list[Path]:
        """Where mcp.json is looked for, in order: `PAO_MCP_CONFIG` alone when it is set, else
        `./mcp.json` and then `mcp.json` in the user config dir (platformdirs)."""
        if self.mcp_config is not None:
            return [self.mcp_config]
        return [Path("mcp.json").resolve(), _user_config_dir() / "mcp.json"]

    def mcp_config_path(self) -> Path:
        """The registry file: the first candidate that exists, else the last one (it may not exist)."""
        candidates = self.mcp_config_candidates()
        return next((path for path in candidates if path.is_file()), candidates[-1])
