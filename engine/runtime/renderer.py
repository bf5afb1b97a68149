"""Rendering step arguments where a hostile template cannot stall the worker.

A simple template (value lookups, cheap filters, tests, conditions: `templating.needs_isolation`
says no) costs time linear in what it reads, so it renders in-process, as do strings without
`${`: the usual pipeline never leaves the event loop. Any other template renders in one of a few
child processes (`render_child`), each with its address space capped (PAO_RENDER_MEMORY_MB) and
killed when a render passes its deadline (PAO_RENDER_TIMEOUT_SECONDS). Every render is bounded in
what it produces (`limit` characters). Past a bound the step fails with an error that names it;
heartbeats, tool calls and other runs go on meanwhile, since the event loop only waits on a pipe.

Children start on first use and after a kill, in about a tenth of a second: the bootstrap loads the
templating room without the engine (see render_child). Only JSON crosses the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import struct
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from pao_orchestrator.engine import templating
from pao_orchestrator.errors import StepError

log = logging.getLogger(__name__)

_HEADER: Final = struct.Struct(">I")
_RUNTIME_DIR: Final = str(Path(__file__).resolve().parent)
_ENGINE_DIR: Final = str(Path(__file__).resolve().parent.parent)
# How long a new child may take to start (import Jinja, cap its memory) before it counts as broken.
_START_TIMEOUT: Final = 30.0
# Runs in a fresh interpreter: make the import path the parent's, stand in for the engine and
# runtime packages (their doors would import the whole engine), then serve.
_BOOTSTRAP: Final = """\
import json, sys, types
sys.path[:] = json.loads(sys.argv[1])
for name, path in (("pao_orchestrator.engine", sys.argv[2]), ("pao_orchestrator.engine.runtime", sys.argv[3])):
    module = types.ModuleType(name)
    module.__path__ = [path]
    sys.modules[name] = module
from pao_orchestrator.engine.runtime.render_child import main
main(sys.argv[4:])
"""


class _Child:
    """One render process and its pipes; one request at a time."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self._stdin = process.stdin
        self._stdout = process.stdout

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def ready(self) -> None:
        await self._answer()

    async def request(self, payload: bytes) -> dict[str, Any]:
        self._stdin.write(_HEADER.pack(len(payload)) + payload)
        await self._stdin.drain()
        return await self._answer()

    async def _answer(self) -> dict[str, Any]:
        (size,) = _HEADER.unpack(await self._stdout.readexactly(_HEADER.size))
        answer: dict[str, Any] = json.loads(await self._stdout.readexactly(size))
        return answer

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.process.wait(), timeout=5)
        self._stdin.close()


class Renderer:
    """Renders templated step arguments: in-process when simple, else in an isolated child process."""

    def __init__(
        self,
        *,
        processes: int = 2,
        timeout: float = 1.0,
        memory_mb: int = 256,
        limit: int = templating.MAX_OUTPUT,
    ) -> None:
        self.timeout = timeout
        self.memory_mb = memory_mb
        self.limit = limit
        self._slots = asyncio.Semaphore(processes)
        self._idle: list[_Child] = []
        self._busy: set[_Child] = set()
        self._closed = False
        self.isolated = 0  # renders that went to a child process (for tests and benchmarks)
        self.killed = 0  # children killed at the deadline

    async def render(self, value: Any, context: Mapping[str, Any]) -> Any:
        """`templating.render(value, context)` within the bounds; TemplateError past one."""
        if not templating.needs_isolation(value):
            return templating.render(value, context, limit=self.limit)
        return await self._isolated(value, context)

    async def aclose(self) -> None:
        self._closed = True
        children, self._idle = [*self._idle, *self._busy], []
        for child in children:
            await child.kill()

    async def _spawn(self) -> _Child:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-c",
            _BOOTSTRAP,
            json.dumps(sys.path),
            _ENGINE_DIR,
            _RUNTIME_DIR,
            str(self.memory_mb),
            str(self.timeout * 2 + 1),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            # Nothing of the worker's environment (PAO_SECRET_*, DATABASE_URL...): the secrets a
            # template reads by name come with each request, and the import path comes in argv.
            env={},
        )
        child = _Child(process)
        try:
            # The child says it is ready once it has started; only then does a render's deadline run.
            async with asyncio.timeout(_START_TIMEOUT):
                await child.ready()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            await child.kill()
            raise StepError(f"could not start a template render process: {exc!r}", retryable=True) from None
        return child

    async def _isolated(self, value: Any, context: Mapping[str, Any]) -> Any:
        secrets = context.get("secrets")
        payload = json.dumps(
            {
                "value": value,
                "context": _needed(value, context),
                "secrets": _secret_values(value, secrets),
                "limit": self.limit,
            },
            ensure_ascii=False,
            default=str,
        ).encode()
        async with self._slots:
            if self._closed:
                raise StepError("the worker is stopping", retryable=True)
            child = self._idle.pop() if self._idle else await self._spawn()
            self._busy.add(child)
            healthy = False
            try:
                async with asyncio.timeout(self.timeout):
                    answer = await child.request(payload)
                healthy = not answer.get("exit")
            except TimeoutError:
                self.killed += 1
                raise templating.TemplateError(
                    f"the template did not finish rendering within {self.timeout:g}s "
                    "(PAO_RENDER_TIMEOUT_SECONDS); it was stopped"
                ) from None
            except (OSError, asyncio.IncompleteReadError) as exc:
                log.warning("template render process died (%s); starting another", exc)
                raise templating.TemplateError(
                    "the template's render process died (it may have exhausted its memory)"
                ) from None
            finally:
                self._busy.discard(child)
                if healthy and child.alive and not self._closed:
                    self._idle.append(child)
                else:
                    await child.kill()
            self.isolated += 1
        if isinstance(secrets, templating.Secrets):
            for name in answer.get("used", []):
                secrets.mark_used(str(name))
        if "error" in answer:
            message = str(answer["error"])
            if isinstance(secrets, templating.Secrets):
                message = secrets.redact(message)
            raise templating.TemplateError(message)
        return answer["value"]


def _needed(value: Any, context: Mapping[str, Any]) -> dict[str, Any]:
    """The part of `context` the templates in `value` read (a step's context holds every earlier output)."""
    try:
        chains = templating.references(value)
    except templating.TemplateError:
        chains = set()  # the child reports the syntax error
    roots = {str(chain[0]) for chain in chains}
    needed = {name: context[name] for name in roots if name in context and name != "secrets"}
    steps = context.get("steps")
    if "steps" in needed and isinstance(steps, Mapping):
        ids = {chain[1] for chain in chains if chain[0] == "steps" and len(chain) > 1}
        if all(len(chain) > 1 for chain in chains if chain[0] == "steps"):
            needed["steps"] = {k: v for k, v in steps.items() if k in ids}
    return needed


def _secret_values(value: Any, secrets: Any) -> dict[str, str]:
    """The secrets the templates in `value` name, by name (a template reads a secret by a fixed name)."""
    if not isinstance(secrets, templating.Secrets):
        return {}
    try:
        chains = templating.references(value)
    except templating.TemplateError:
        return {}
    names = {chain[1] for chain in chains if chain[0] == "secrets" and len(chain) > 1}
    return {str(name): secrets.peek(str(name)) for name in names if isinstance(name, str) and secrets.has(name)}
