"""Every SQL statement the store runs, parsed once from the `*.sql` files beside this module.

Statements are named by `-- name: <name>` headers, as procrastinate does; code
refers to them by name so each statement is written exactly once. Each `.sql`
file sits next to the store module that runs its statements (one per table
family). NOTIFY channel names are written `:RUNS_CHANNEL` and so on and filled
in from `pao_orchestrator.contracts` here, so each is defined once.
"""

from __future__ import annotations

import re
from functools import cache
from importlib.resources import files

from pao_orchestrator.contracts import CHANNELS

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
_CONTRACT_NAME = re.compile(r"(?<![:\w]):([A-Z][A-Z_]*_CHANNEL)\b")


def _fill(match: re.Match[str]) -> str:
    name = match.group(1)
    if name not in CHANNELS:
        raise RuntimeError(f"SQL refers to :{name}, which pao_orchestrator.contracts does not define")
    return f"'{CHANNELS[name]}'"


@cache
def _load() -> dict[str, str]:
    queries: dict[str, str] = {}
    sources = sorted((p for p in files(__package__).iterdir() if p.name.endswith(".sql")), key=lambda p: p.name)
    for path in sources:
        parts = _HEADER.split(path.read_text(encoding="utf-8"))
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"{path.name} defines {name!r}, which is already defined")
            queries[name] = _CONTRACT_NAME.sub(_fill, body.strip().rstrip(";"))
    return queries


def fill_contracts(text: str) -> str:
    """`text` with each `:<NAME>_CHANNEL` replaced by the quoted channel name from the contracts."""
    return _CONTRACT_NAME.sub(_fill, text)


def sql(name: str) -> str:
    """The statement named `name`."""
    return _load()[name]


def names() -> frozenset[str]:
    return frozenset(_load())
