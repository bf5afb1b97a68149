"""The template sandbox: the Jinja environment, its filters, compilation, and the JSON values it lets out.

See `engine.templates` for the syntax and the sandbox's rules.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from datetime import time as dtime
from typing import Any, Final, cast

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from pao_orchestrator.engine.templating.errors import MissingValue, ValueProblem, kind_of, short_repr
from pao_orchestrator.engine.templating.secrets import Secrets

_ESCAPE: Final = "$${"
_ESCAPED: Final = "${'${'}"
_MAX_SEQUENCE: Final = 1_000_000
_MAX_POWER_BITS: Final = 65_536

Path = tuple[str | int, ...]


class _Undefined(StrictUndefined):
    """StrictUndefined whose error remembers what was looked up, for messages listing what exists."""

    __slots__ = ()

    def __init__(
        self,
        hint: str | None = None,
        obj: Any = missing,
        name: str | None = None,
        exc: type[jinja2.exceptions.TemplateRuntimeError] = UndefinedError,
    ) -> None:
        if exc is UndefinedError:
            exc = cast("type[UndefinedError]", functools.partial(MissingValue, obj=obj, name=name))
        super().__init__(hint, obj, name, exc)


# --------------------------------------------------------------------------- environment


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, with field-first lookup on objects and guarded secrets."""

    intercepted_binops = frozenset({"*", "**"})

    def getattr(self, obj: Any, attribute: str) -> Any:
        if isinstance(obj, (Mapping, Secrets)):
            return self._lookup(obj, attribute)
        return super().getattr(obj, attribute)

    def getitem(self, obj: Any, argument: Any) -> Any:
        if isinstance(obj, (Mapping, Secrets)):
            return self._lookup(obj, argument)
        return super().getitem(obj, argument)

    def _lookup(self, obj: Mapping[Any, Any] | Secrets, key: Any) -> Any:
        if isinstance(obj, Secrets):
            if isinstance(key, str) and obj.has(key):
                return obj.get(key)
            return self.undefined(obj.missing_message(key), obj=obj, name=key)
        try:
            return obj[key]
        except (KeyError, TypeError):
            return self.undefined(obj=obj, name=key)

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        # The `attr` filter reads Python attributes directly; nothing on Secrets is for templates.
        if isinstance(obj, Secrets):
            return False
        return super().is_safe_attribute(obj, attr, value)

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int) and len(seq) * times > _MAX_SEQUENCE:
                    raise SecurityError(f"repetition would build more than {_MAX_SEQUENCE} items")
        elif (
            operator == "**"
            and isinstance(left, int)
            and isinstance(right, int)
            and max(abs(left).bit_length(), 1) * right > _MAX_POWER_BITS
        ):
            raise SecurityError("the power is too large")
        return super().call_binop(context, operator, left, right)


def _dumps(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent)


def _finalize(value: Any) -> Any:
    """How a value is written into text: strings and numbers as is, everything else as JSON."""
    if isinstance(value, (str, Undefined)):
        return value  # str() of an undefined raises
    if value is None or isinstance(value, bool):
        return _dumps(value)
    if isinstance(value, (int, float)):
        return value
    return _dumps(to_json_value(value))


_NO_DEFAULT: Final[Any] = object()


def _fail_if_undefined(value: Any) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()


def _int_filter(value: Any, default: Any = _NO_DEFAULT, base: int = 10) -> Any:
    if isinstance(value, Undefined) and default is not _NO_DEFAULT:
        return default
    _fail_if_undefined(value)
    try:
        if isinstance(value, str):
            try:
                return int(value.strip(), base)
            except ValueError:
                return int(float(value))
        if isinstance(value, (int, float)):
            return int(value)
    except (ValueError, OverflowError):
        pass
    if default is not _NO_DEFAULT:
        return default
    raise ValueProblem(f"int: cannot convert {short_repr(value)} to an integer; int(0) gives a fallback")


def _float_filter(value: Any, default: Any = _NO_DEFAULT) -> Any:
    if isinstance(value, Undefined) and default is not _NO_DEFAULT:
        return default
    _fail_if_undefined(value)
    try:
        if isinstance(value, (str, int, float)):
            return float(value)
    except ValueError:
        pass
    if default is not _NO_DEFAULT:
        return default
    raise ValueProblem(f"float: cannot convert {short_repr(value)} to a number; float(0) gives a fallback")


def _fromjson_filter(value: Any) -> Any:
    _fail_if_undefined(value)
    if not isinstance(value, (str, bytes)):
        raise ValueProblem(f"fromjson: expects a string, got {kind_of(value)}")
    try:
        return json.loads(value)
    except ValueError as exc:
        raise ValueProblem(f"fromjson: not valid JSON ({exc}): {short_repr(value)}") from None


def _tojson_filter(value: Any, indent: int | None = None) -> str:
    return _dumps(to_json_value(value), indent=indent)


def _make_environment() -> _Environment:
    env = _Environment(
        variable_start_string="${",
        variable_end_string="}",
        block_start_string="${%",
        block_end_string="%}",
        comment_start_string="${#",
        comment_end_string="#}",
        undefined=_Undefined,
        autoescape=False,
        keep_trailing_newline=True,
        finalize=_finalize,
        auto_reload=False,
    )
    env.globals.clear()
    env.filters.update(
        tojson=_tojson_filter,
        fromjson=_fromjson_filter,
        int=_int_filter,
        float=_float_filter,
    )
    return env


_env: Final = _make_environment()


# --------------------------------------------------------------------------- compilation


@dataclass(frozen=True)
class Compiled:
    template: jinja2.Template
    exact: bool  # the whole string is one `${ expr }`: evaluate and keep the type
    chains: tuple[Path, ...]  # name.field[...] paths the template reads, in source order
    undeclared: frozenset[str]  # top-level names it reads
    includes: bool  # uses include/import/extends


def unescape(source: str) -> str:
    return source.replace(_ESCAPE, _ESCAPED)


@functools.lru_cache(maxsize=4096)
def compile_template(source: str) -> Compiled:
    """Compile a (pre-escaped) template once; raises TemplateSyntaxError."""
    ast = _env.parse(source)
    chains = tuple(_chains(ast))
    undeclared = set(meta.find_undeclared_variables(ast))
    if any(n.name == "self" and n.ctx == "load" for n in ast.find_all(nodes.Name)):
        undeclared.add("self")  # Jinja's TemplateReference: not data, so treat it as an unknown name
    includes = any(True for _ in meta.find_referenced_templates(ast))
    expression = _single_expression(_env.parse(source))
    if expression is not None:
        assign = nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)
        template = _env.from_string(nodes.Template([assign], lineno=1))
    else:
        template = _env.from_string(source)
    chains = tuple(c for c in chains if c[0] in undeclared)
    return Compiled(template, expression is not None, chains, frozenset(undeclared), includes)


def _single_expression(ast: nodes.Template) -> nodes.Expr | None:
    if len(ast.body) == 1 and isinstance(ast.body[0], nodes.Output):
        parts = ast.body[0].nodes
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            return parts[0]
    return None


def _chains(node: nodes.Node) -> Iterator[Path]:
    """Every `name.field['key'][0]` path read, in source order (a dynamic subscript ends the path)."""
    if isinstance(node, (nodes.Getattr, nodes.Getitem, nodes.Name)):
        keys: list[str | int] = []
        current: nodes.Node = node
        while True:
            if isinstance(current, nodes.Getattr):
                keys.append(current.attr)
                current = current.node
            elif isinstance(current, nodes.Getitem):
                arg = current.arg
                if isinstance(arg, nodes.Const) and isinstance(arg.value, (str, int)):
                    keys.append(arg.value)
                else:
                    keys.clear()  # what follows a dynamic key cannot be known statically
                    yield from _chains(arg)
                current = current.node
            elif isinstance(current, nodes.Name):
                if current.ctx == "load":
                    yield (current.name, *reversed(keys))
                return
            else:
                yield from _chains(current)
                return
    for child in node.iter_child_nodes():
        yield from _chains(child)


# --------------------------------------------------------------------------- JSON values


def to_json_value(value: Any) -> Any:
    """Check (and copy) a result so only JSON values leave the sandbox."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Secrets):
        raise ValueProblem("read a secret by name, e.g. ${secrets.TOKEN}")
    if isinstance(value, Mapping):
        return {_json_key(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, Iterator)):
        return [to_json_value(v) for v in value]
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    raise ValueProblem(
        f"the result is a {type(value).__name__}, not a JSON value "
        "(string, number, boolean, null, list or object); did you mean a field, or forget ()?"
    )


def _json_key(key: Any) -> str:
    if isinstance(key, str):
        return key
    if key is None or isinstance(key, bool):
        return _dumps(key)
    if isinstance(key, (int, float)):
        return str(key)
    raise ValueProblem(f"an object key is a {type(key).__name__}; keys must be strings")


def syntax_message(exc: TemplateSyntaxError) -> str:
    message = exc.message or "invalid template"
    if message.startswith("No filter named"):
        message += f" Filters: {', '.join(sorted(_env.filters))}"
    elif message.startswith("No test named"):
        message += f" Tests: {', '.join(sorted(_env.tests))}"
    if exc.source and "\n" in exc.source:
        message = f"line {exc.lineno}: {message}"
    return message
