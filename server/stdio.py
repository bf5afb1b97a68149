"""The stdio transport's stdin, made interruptible so that a signal can end the session.

The MCP SDK reads stdin line by line in a worker thread. A read() blocked on a pipe
cannot be cancelled, so while a client keeps stdin open (every MCP client does) the
session could never end on SIGTERM or SIGINT: cancelling it waits for a line that
never comes. Here stdin is read through a reader that waits with poll() for data or
for an interrupt before each read; `interrupt()` gives the SDK end of file, and the
session ends exactly as if the client had closed stdin.
"""

from __future__ import annotations

import contextlib
import io
import os
import select
import sys
from collections.abc import Callable, Iterator
from typing import Any


class _WakeableReader(io.RawIOBase):
    """The bytes of `fd`, until `interrupt()`: from then on every read is end of file."""

    def __init__(self, fd: int) -> None:
        super().__init__()
        self._fd = fd
        self._wake_r, self._wake_w = os.pipe()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        while True:
            ready = {fd for fd, _event in poller.poll()}
            if self._wake_r in ready:
                return 0
            if ready:  # data, end of file (POLLHUP) or an error: read() reports which
                break
        data = os.read(self._fd, len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def interrupt(self) -> None:
        os.write(self._wake_w, b"\0")  # never drained: every later poll sees it too


@contextlib.contextmanager
def interruptible_stdin() -> Iterator[Callable[[], None]]:
    """Swap `sys.stdin` for an interruptible reader of the client's bytes; yield `interrupt`.

    Fd 0 points at /dev/null meanwhile (as the SDK's own stdin claim does), so child
    processes never read the wire. Without poll() (Windows) or a real stdin, nothing
    changes and `interrupt` does nothing.
    """
    try:
        stdin_fd = sys.stdin.fileno()
    except (AttributeError, OSError, ValueError):
        stdin_fd = -1
    if stdin_fd != 0 or not hasattr(select, "poll"):
        yield lambda: None
        return
    import fcntl  # POSIX, like poll()

    wire = fcntl.fcntl(0, fcntl.F_DUPFD_CLOEXEC, 3)  # never 1 or 2, even if those are closed
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    reader = _WakeableReader(wire)
    original = sys.stdin
    # Not backed by fd 0, so the SDK reads it as it is instead of claiming fd 0 again.
    sys.stdin = io.TextIOWrapper(io.BufferedReader(reader), encoding="utf-8", errors="replace")
    try:
        yield reader.interrupt
    finally:
        reader.interrupt()  # a reader thread still waiting (a cancelled session) returns now
        sys.stdin = original
        os.dup2(wire, 0)
        # `wire` and the wake pipe stay open: a worker thread may still be inside readinto(),
        # and a closed descriptor could be reused under it (the SDK keeps its own for the same reason).
