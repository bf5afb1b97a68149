"""Template secrets: `${secrets.NAME}` reads `PAO_SECRET_NAME`, `redact` hides what was read, and
`seal`/`unseal` let a resumed run give later steps the real values without storing them."""

from __future__ import annotations

import copy
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Final

from pao_orchestrator.contracts import SECRET_ENV_PREFIX as SECRET_PREFIX
from pao_orchestrator.engine.templating.errors import TemplateError
from pao_orchestrator.errors import ConfigurationError

REDACTED: Final = "***"
MIN_SECRET_LENGTH: Final = 8
"""The shortest secret value accepted. Every secret is masked wherever it appears, whatever its
length; a value shorter than this would mask ordinary text ("zone", "1") and, worse, be guessable.
`check_secrets` refuses such values when the orchestrator starts."""


def check_secrets(environ: Mapping[str, str]) -> None:
    """Refuse `PAO_SECRET_*` values that are empty or shorter than MIN_SECRET_LENGTH, naming them
    (never their values); ConfigurationError lists every offender at once."""
    short = sorted(
        key
        for key, value in environ.items()
        if key.startswith(SECRET_PREFIX) and len(key) > len(SECRET_PREFIX) and len(value) < MIN_SECRET_LENGTH
    )
    if short:
        raise ConfigurationError(
            f"{', '.join(short)}: a secret must be at least {MIN_SECRET_LENGTH} characters long "
            "(a shorter one would be guessable, and masking it would rewrite ordinary text); "
            "set a longer value or unset it"
        )


class Secrets:
    """`${secrets.NAME}`: reads only `PAO_SECRET_<NAME>`, and remembers which values were read.

    The environment is filtered once, at construction: nothing without the
    prefix is kept, so no template can reach `DATABASE_URL` and the like.
    Create one per run; `used_values()` then lists what must be redacted.
    """

    __slots__ = ("_used", "_values")

    def __init__(self, environ: Mapping[str, str], *, checked: bool = False) -> None:
        # `checked`: the caller's environment already passed check_secrets (open_engine checks it once at
        # start-up; the executor and the prober then make one of these per run without re-checking).
        if not checked:
            check_secrets(environ)
        self._values: dict[str, str] = {
            key[len(SECRET_PREFIX) :]: value
            for key, value in environ.items()
            if key.startswith(SECRET_PREFIX) and len(key) > len(SECRET_PREFIX)
        }
        self._used: dict[str, str] = {}

    def names(self) -> list[str]:
        """Names of the secrets that are set (never their values)."""
        return sorted(self._values)

    def has(self, name: str) -> bool:
        return name in self._values

    def get(self, name: str) -> str:
        """The secret's value (recorded as used); TemplateError if it is not set."""
        if name not in self._values:
            raise TemplateError(self.missing_message(name))
        value = self._values[name]
        self._used[name] = value
        return value

    def peek(self, name: str) -> str:
        """The secret's value without recording it as used: for handing to an isolated render, which
        reports back what it used."""
        return self._values[name]

    def mark_used(self, name: str) -> None:
        """Record a secret as used by a render that ran elsewhere."""
        if name in self._values:
            self._used[name] = self._values[name]

    def missing_message(self, name: Any) -> str:
        message = f"secret {name!r} is not set: export {SECRET_PREFIX}{name} in the orchestrator's environment"
        if self._values:
            return f"{message}; secrets that are set: {', '.join(self.names())}"
        return f"{message}; no {SECRET_PREFIX}* variables are set"

    def used(self) -> dict[str, str]:
        """Name -> value of every secret read so far."""
        return dict(self._used)

    def used_values(self) -> set[str]:
        """The values read so far: pass them to `redact`."""
        return set(self._used.values())

    def redact(self, value: Any) -> Any:
        """`redact(value, self.used_values())`."""
        return redact(value, self._used.values())

    def __repr__(self) -> str:
        return f"Secrets(names={self.names()!r})"


def redact(value: Any, secret_values: Iterable[str]) -> Any:
    """A deep copy of `value` with every secret value in its strings replaced by ***.

    Object keys are never rewritten (a key is a name, not data: see `secret_in_keys`, which
    callers use to refuse a value whose keys hold a secret).
    """
    wanted = {s for s in secret_values if isinstance(s, str) and s}
    if not wanted:
        return _redact(value, None)
    alternatives = sorted(wanted, key=len, reverse=True)  # longest first when one contains another
    return _redact(value, re.compile("|".join(re.escape(s) for s in alternatives)))


def secret_in_keys(value: Any, secret_values: Iterable[str]) -> str | None:
    """The path of the first object whose keys hold a secret value, or None.

    Masking does not rewrite keys, so a value with a secret in a key cannot be stored or passed
    on; the caller refuses it (the path names where, never the key itself).
    """
    wanted = [s for s in secret_values if isinstance(s, str) and s]
    if not wanted:
        return None
    stack: list[tuple[Any, str]] = [(value, "output")]
    while stack:
        item, where = stack.pop()
        if isinstance(item, Mapping):
            for key, sub in item.items():
                if isinstance(key, str) and any(secret in key for secret in wanted):
                    return where
                stack.append((sub, f"{where}.{key}"))  # this key holds no secret: it may be named
        elif isinstance(item, (list, tuple)):
            stack.extend((sub, f"{where}[{index}]") for index, sub in enumerate(item))
    return None


def _redact(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value) if pattern is not None else value
    if isinstance(value, Mapping):
        return {k: _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, pattern) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, pattern) for v in value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return copy.deepcopy(value)


# A sealed value marks each secret as <open><nonce>:<NAME><close>. The nonce is drawn per sealed
# value, so text that happens to contain these private-use characters is never mistaken for a mark.
_OPEN: Final = "\ue000"
_CLOSE: Final = "\ue001"


def seal(value: Any, used: Mapping[str, str]) -> dict[str, Any] | None:
    """`value` with every secret in `used` (name -> value) replaced by a mark naming it.

    None when no such secret occurs in `value` (it can be stored and reused as it is). The result
    holds names, never values: `unseal` puts the values back.
    """
    wanted = {v: k for k, v in used.items() if isinstance(v, str) and v}
    if not wanted:
        return None
    pattern = re.compile("|".join(re.escape(s) for s in sorted(wanted, key=len, reverse=True)))
    nonce = os.urandom(4).hex()
    found = False

    def mark(match: re.Match[str]) -> str:
        nonlocal found
        found = True
        return f"{_OPEN}{nonce}:{wanted[match.group(0)]}{_CLOSE}"

    sealed = _map_strings(value, lambda text: pattern.sub(mark, text))
    return {"nonce": nonce, "value": sealed} if found else None


def unseal(sealed: Mapping[str, Any], secrets: Secrets) -> Any:
    """The value `seal` sealed, with each secret read again from `secrets` (and so recorded as used).

    A secret that is no longer set raises TemplateError (a step must never receive a stand-in).
    """
    pattern = re.compile(f"{_OPEN}{re.escape(str(sealed['nonce']))}:([^{_CLOSE}]*){_CLOSE}")
    return _map_strings(sealed["value"], lambda text: pattern.sub(lambda m: secrets.get(m.group(1)), text))


def _map_strings(value: Any, change: Callable[[str], str]) -> Any:
    if isinstance(value, str):
        return change(value)
    if isinstance(value, Mapping):
        return {_map_strings(k, change): _map_strings(v, change) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_map_strings(v, change) for v in value]
    return value
