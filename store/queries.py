"""Every SQL statement the store runs, parsed once from the `*.sql` files beside this module.

Statements are named by `-- name: <name>` headers, as procrastinate does; code
refers to them by name so each statement is written exactly once. Each `.sql`
file sits next to the store module that runs its statements.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

_HEADER = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


@cache
def _load() -> dict[str, str]:
    queries: dict[str, str] = {}
    for path in sorted(Path(__file__).parent.glob("*.sql")):
        parts = _HEADER.split(path.read_text())
        for name, body in zip(parts[1::2], parts[2::2], strict=True):
            if name in queries:
                raise RuntimeError(f"{path.name} defines {name!r}, which is already defined")
            queries[name] = body.strip().rstrip(";")
    return queries


def sql(name: str) -> str:
    """The statement named `name`."""
    return _load()[name]


def names() -> frozenset[str]:
    return frozenset(_load())
