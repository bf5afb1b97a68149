"""The process a template renders in when it is not simple: loops, calls, string building.

`renderer.Renderer` starts it and keeps it for many renders. It reads requests from stdin and
writes answers to stdout, each a 4-byte big-endian length then JSON:

    ready    {"ready": true}  (once, when it has started)
    request  {"value": ..., "context": {...}, "secrets": {"NAME": "value"}, "limit": n}
    answer   {"value": ..., "used": ["NAME"]}  or  {"error": "...", "used": [...], "exit": bool}

Its address space is capped (RLIMIT_AS): a template that builds a gigabyte string gets a
MemoryError here, answered as an error, and this process then exits so that the next render gets
a fresh one. The parent enforces the deadline by killing it; a watchdog thread also ends it when
the parent is gone or a render runs far past any deadline, so no orphan keeps a core busy.

Only JSON crosses the pipe, in both directions: nothing computed here is unpickled by the parent.
Started by the bootstrap in `renderer`, which loads the templating room without the engine's
door (importing that would load the whole engine: seconds and tens of megabytes per process).
"""

from __future__ import annotations

import json
import os
import resource
import struct
import sys
import threading
import time
from typing import Any, BinaryIO

from pao_orchestrator.contracts import SECRET_ENV_PREFIX
from pao_orchestrator.engine import templating

_HEADER = struct.Struct(">I")


class _State:
    started: float | None = None


def _watch(parent: int, state: _State, hard_deadline: float) -> None:
    while True:
        time.sleep(0.25)
        if os.getppid() != parent:
            os._exit(0)
        started = state.started
        if started is not None and time.monotonic() - started > hard_deadline:
            os._exit(3)


def _virtual_memory() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _limit_memory(megabytes: int) -> None:
    try:
        current = _virtual_memory()
    except OSError:  # not Linux: no /proc; leave the address space as it is
        return
    ceiling = current + megabytes * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (ceiling, ceiling))


def _read(stream: BinaryIO) -> dict[str, Any] | None:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    request: dict[str, Any] = json.loads(stream.read(size))
    return request


def _write(stream: BinaryIO, answer: dict[str, Any]) -> None:
    data = json.dumps(answer, ensure_ascii=False).encode()
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _render(request: dict[str, Any], memory_mb: int) -> dict[str, Any]:
    secrets = templating.Secrets({SECRET_ENV_PREFIX + k: v for k, v in request.get("secrets", {}).items()})
    context = {**request["context"], "secrets": secrets}
    try:
        value = templating.render(request["value"], context, limit=int(request["limit"]))
    except templating.TemplateError as exc:
        return {"error": str(exc), "used": sorted(secrets.used())}
    except MemoryError:
        return {
            "error": f"the template needs more than the {memory_mb} MB of memory a render may use",
            "used": sorted(secrets.used()),
            "exit": True,
        }
    return {"value": value, "used": sorted(secrets.used())}


def main(argv: list[str]) -> None:
    memory_mb, hard_deadline = int(argv[0]), float(argv[1])
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    # Nothing else may write to the answer channel.
    sys.stdout = sys.stderr
    state = _State()
    threading.Thread(target=_watch, args=(os.getppid(), state, hard_deadline), daemon=True).start()
    _limit_memory(memory_mb)
    _write(stdout, {"ready": True})
    while True:
        request = _read(stdin)
        if request is None:
            return
        state.started = time.monotonic()
        try:
            answer = _render(request, memory_mb)
        except MemoryError:
            answer = {"error": f"the template needs more than the {memory_mb} MB of memory a render may use"}
            answer["exit"] = True
        state.started = None
        try:
            _write(stdout, answer)
        except MemoryError:
            _write(stdout, {"error": "the result could not be sent: out of memory", "exit": True})
        if answer.get("exit"):
            return
