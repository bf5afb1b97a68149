"""pao_orchestrator: a durable scheduler that LLM agents drive over MCP.

The rooms, top to bottom (each imports only the ones below it):

* `server`  the MCP face: tools, transports, the `pao` CLI;
* `engine`  services (tasks, lifecycle, runs) above four sub-rooms:
  `schedule`, `templating`, `downstream` and `runtime`;
* `store`   Postgres access, the embedded Postgres and the migration runner;
* this package's own modules, the floor every room stands on:
  `errors` (the exception tree), `vocabulary` (statuses, kinds, policies)
  `contracts` (names the outside world relies on: NOTIFY channels,
  the reserved server name, the secrets prefix) and `metrics` (the
  Prometheus instruments, one registry per process).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from pao_orchestrator.contracts import DISTRIBUTION

try:
    __version__ = version(DISTRIBUTION)
except PackageNotFoundError:  # pragma: no cover - running from a tree that was never installed
    __version__ = "0+unknown"
