"""What Postgres can hold of a run: values and texts checked before the run's record is written.

jsonb and text cannot hold a NUL character, jsonb holds no NaN or Infinity, and a step's value
(its rendered arguments, its output) is at most `limit` characters of JSON (PAO_MAX_VALUE_BYTES,
1 MiB by default). A value that breaks one of these rules fails its own step, with an error that
says which rule and where, before anything is written: one run's bad output never reaches a batch
it shares with other runs. Texts written beside a run (errors, reasons) are made storable instead:
a NUL becomes the two characters `\\0` and an over-long text is cut, saying by how much.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, Final

MAX_TEXT: Final = 16_384
"""The longest error or reason stored; a downstream server may answer with megabytes."""
MAX_DEPTH: Final = 256
"""How deeply a value may nest (Postgres and every JSON reader stop somewhere)."""
_SURROGATE: Final = re.compile("[\ud800-\udfff]")


def _where(path: list[str | int]) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else part)
    return text or "(the whole value)"


def problem(value: Any, limit: int, *, limit_name: str | None = "PAO_MAX_VALUE_BYTES") -> str | None:
    """Why `value` cannot be stored as jsonb (naming where in it), or None when it can. `limit_name`:
    the setting that sets `limit`, named in the answer (None for a fixed limit).

    Walks the value once and stops as soon as it knows: at the first problem, or once the size
    passes `limit`, so a huge value costs no more than a value of `limit` characters.
    """
    left = limit
    # (value, path, depth); iterative, so a deeply nested value cannot exhaust the stack.
    stack: list[tuple[Any, list[str | int], int]] = [(value, [], 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            left -= len(item) + 2
            if "\x00" in item:
                return f"contains a NUL character at {_where(path)}, which Postgres text cannot hold"
            if not item.isascii() and _SURROGATE.search(item):
                return f"contains a lone surrogate (half a UTF-16 pair) at {_where(path)}, which is not text"
        elif isinstance(item, bool) or item is None:
            left -= 5
        elif isinstance(item, int):
            left -= 8
        elif isinstance(item, float):
            left -= 8
            if not math.isfinite(item):
                name = "NaN" if math.isnan(item) else ("Infinity" if item > 0 else "-Infinity")
                return f"contains {name} at {_where(path)}; JSON in Postgres holds only finite numbers"
        elif isinstance(item, Mapping):
            if depth >= MAX_DEPTH:
                return f"nests more than {MAX_DEPTH} levels deep at {_where(path)}"
            for key, sub in item.items():
                text = str(key)
                left -= len(text) + 4
                if "\x00" in text or (not text.isascii() and _SURROGATE.search(text)):
                    return f"has a key at {_where(path)} that Postgres text cannot hold (a NUL or a lone surrogate)"
                stack.append((sub, [*path, text], depth + 1))
        elif isinstance(item, (list, tuple)):
            if depth >= MAX_DEPTH:
                return f"nests more than {MAX_DEPTH} levels deep at {_where(path)}"
            left -= len(item) + 2
            stack.extend((sub, [*path, index], depth + 1) for index, sub in enumerate(item))
        else:
            return f"holds a {type(item).__name__} at {_where(path)}, which is not a JSON value"
        if left < 0:
            setting = f", {limit_name}" if limit_name else ""
            return f"is larger than {limit:,} characters of JSON (the limit{setting})"
    return None


def larger_than(value: Any, limit: int) -> bool:
    """Whether `value` takes more than `limit` characters of JSON (about: strings by length, others by
    a few), walking no more of it than that."""
    left = limit
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            left -= len(item) + 2
        elif isinstance(item, Mapping):
            left -= 2
            for key, sub in item.items():
                left -= len(str(key)) + 4
                stack.append(sub)
        elif isinstance(item, (list, tuple)):
            left -= len(item) + 2
            stack.extend(item)
        else:
            left -= 8
        if left < 0:
            return True
    return False


def text(value: str | None) -> str | None:
    """An error or reason as Postgres text can hold it: NUL spelt `\\0`, at most MAX_TEXT characters."""
    if value is None:
        return None
    if "\x00" in value:
        value = value.replace("\x00", "\\0")
    if not value.isascii() and _SURROGATE.search(value):
        value = value.encode("utf-8", "backslashreplace").decode("utf-8")
    if len(value) > MAX_TEXT:
        value = f"{value[:MAX_TEXT]}... ({len(value) - MAX_TEXT:,} more characters)"
    return value
