"""The template sandbox: the Jinja environment, its filters, compilation, and the JSON values it lets out.

See `engine.templates` for the syntax and the sandbox's rules.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
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

MAX_OUTPUT: Final = 1_048_576
"""Default bound on what one render produces: characters of text, or of the JSON of a value."""
MAX_TEMPLATE_LENGTH: Final = 16_384
"""The longest template (a string holding `${`): parsing and compiling cost grows with it."""
# The most value references (names, outputs) a template may hold and still render in-process.
_SIMPLE_MAX_NODES: Final = 64
# Filters that cost time linear in their input and never return more than it: a template made of
# value lookups, these filters, tests and conditions renders in-process (see `Parsed.simple`).
SIMPLE_FILTERS: Final = frozenset(
    {
        "abs", "capitalize", "count", "d", "default", "first", "float", "fromjson", "int", "last",
        "length", "lower", "max", "min", "reverse", "round", "sort", "string", "sum", "title",
        "tojson", "trim", "truncate", "unique", "upper", "wordcount",
    }
)  # fmt: skip
# The bound of the render in progress (to_json_value and text output check against it).
_limit: ContextVar[int] = ContextVar("pao_template_output_limit", default=MAX_OUTPUT)

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
class Parsed:
    """What a template is, learnt from its syntax tree without compiling it."""

    exact: bool  # the whole string is one `${ expr }`: evaluate and keep the type
    chains: tuple[Path, ...]  # name.field[...] paths the template reads, in source order
    undeclared: frozenset[str]  # top-level names it reads
    includes: bool  # uses include/import/extends
    # It only reads values (names, fields, constant subscripts) through the SIMPLE_FILTERS, tests,
    # comparisons and conditions: no loop, no call, no assignment, no operator that builds a value
    # larger than its input. Its cost is linear in what it reads, so it may render in-process;
    # anything else renders in an isolated process with a deadline and a memory limit.
    simple: bool
    # Why this template's use of `secrets` is refused, or None. A secret may only be written out
    # whole: `${secrets.NAME}` as the entire template or as one plain part of its text. Anything
    # else (a filter, a slice, a comparison, a loop, an assignment) could transform it into text
    # that no after-the-fact masking recognises, so it is refused before it can run.
    secret_misuse: str | None = None
    # A dunder attribute it reads (`__class__`, `__globals__`...): never data, always an escape attempt.
    dunder: str | None = None


@dataclass(frozen=True)
class Compiled:
    template: jinja2.Template
    parsed: Parsed

    @property
    def exact(self) -> bool:
        return self.parsed.exact

    @property
    def chains(self) -> tuple[Path, ...]:
        return self.parsed.chains


def unescape(source: str) -> str:
    return source.replace(_ESCAPE, _ESCAPED)


def _parse(source: str) -> nodes.Template:
    if len(source) > MAX_TEMPLATE_LENGTH:
        raise TemplateSyntaxError(
            f"the template is {len(source):,} characters long; at most {MAX_TEMPLATE_LENGTH:,} "
            "(build long text in an earlier step, or split it)",
            lineno=1,
        )
    try:
        return _env.parse(source)
    except RecursionError:
        raise TemplateSyntaxError("the template nests too deeply", lineno=1) from None


@functools.lru_cache(maxsize=4096)
def parse_template(source: str) -> Parsed:
    """Parse a (pre-escaped) template once and describe it; raises TemplateSyntaxError."""
    ast = _parse(source)
    _check_names(ast)
    undeclared = _undeclared(ast)
    includes = any(True for _ in meta.find_referenced_templates(ast))
    chains = tuple(c for c in _chains(ast) if c[0] in undeclared)
    return Parsed(
        _single_expression(ast) is not None,
        chains,
        frozenset(undeclared),
        includes,
        _is_simple(ast),
        _secret_misuse(ast),
        next((n.attr for n in ast.find_all(nodes.Getattr) if n.attr.startswith("__")), None),
    )


@functools.lru_cache(maxsize=4096)
def compile_template(source: str) -> Compiled:
    """Compile a (pre-escaped) template once; raises TemplateSyntaxError."""
    parsed = parse_template(source)
    expression = _single_expression(_parse(source))
    try:
        if expression is not None:
            assign = nodes.Assign(nodes.Name("result", "store"), expression, lineno=1)
            template = _env.from_string(nodes.Template([assign], lineno=1))
        else:
            template = _env.from_string(source)
    except RecursionError:
        raise TemplateSyntaxError("the template nests too deeply", lineno=1) from None
    return Compiled(template, parsed)


def _check_names(ast: nodes.Template) -> None:
    """Unknown filters and tests, as Jinja's compiler would report them (without compiling)."""
    for node in ast.find_all((nodes.Filter, nodes.Test)):
        known = _env.filters if isinstance(node, nodes.Filter) else _env.tests
        if node.name not in known:
            kind = "filter" if isinstance(node, nodes.Filter) else "test"
            raise TemplateSyntaxError(f"No {kind} named {node.name!r}.", node.lineno)


def _undeclared(ast: nodes.Template) -> set[str]:
    """Top-level names a template reads: loaded and never bound in it (by set, for, macro, with).

    Not `jinja2.meta.find_undeclared_variables`: it runs Jinja's code generator, which evaluates
    constant expressions, so `${ 'a' | center(10**10) }` would build its string right here, in the
    process checking or classifying the template.
    """
    loaded: set[str] = set()
    bound: set[str] = set()
    for name in ast.find_all(nodes.Name):
        (loaded if name.ctx == "load" else bound).add(name.name)
    if any(True for _ in ast.find_all(nodes.For)):
        bound.add("loop")
    if any(True for _ in ast.find_all((nodes.Macro, nodes.CallBlock))):
        bound.update({"caller", "varargs", "kwargs"})
    # `self` is Jinja's TemplateReference: not data, so it stays an unknown name.
    return loaded - bound


def _single_expression(ast: nodes.Template) -> nodes.Expr | None:
    if len(ast.body) == 1 and isinstance(ast.body[0], nodes.Output):
        parts = ast.body[0].nodes
        if len(parts) == 1 and not isinstance(parts[0], nodes.TemplateData):
            return parts[0]
    return None


_SIMPLE_NODES: Final = (
    nodes.Template,
    nodes.Output,
    nodes.TemplateData,
    nodes.If,
    nodes.Name,
    nodes.Getattr,
    nodes.Getitem,
    nodes.Slice,
    nodes.Const,
    nodes.Filter,
    nodes.Test,
    nodes.CondExpr,
    nodes.And,
    nodes.Or,
    nodes.Not,
    nodes.Neg,
    nodes.Pos,
    nodes.Compare,
    nodes.Operand,
    nodes.Keyword,
)


def _is_simple(ast: nodes.Template) -> bool:
    count = 0
    for node in ast.find_all(nodes.Node):
        if not isinstance(node, _SIMPLE_NODES):
            return False
        if isinstance(node, nodes.Filter) and node.name not in SIMPLE_FILTERS:
            return False
        if isinstance(node, nodes.Name) and node.ctx != "load":
            return False
        if isinstance(node, nodes.Getitem) and not isinstance(node.arg, (nodes.Const, nodes.Slice)):
            return False
        if isinstance(node, (nodes.Name, nodes.Output)):
            count += 1
    return count <= _SIMPLE_MAX_NODES


SECRET_USE_RULE: Final = (
    "a secret can only be written out whole, as ${secrets.NAME} alone or inside plain text "
    "('Bearer ${secrets.TOKEN}'), in an argument sent to a downstream tool; filters, slices, "
    "comparisons, loops and assignments on it are refused, so no transformation can carry its "
    "value past the masking of stored and returned values"
)


def _is_plain_secret(node: nodes.Node) -> bool:
    """`secrets.NAME` or `secrets['NAME']`: a secret read by a fixed name, nothing applied to it."""
    by_name = isinstance(node, nodes.Getattr) or (
        isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str)
    )
    target = getattr(node, "node", None)
    return by_name and isinstance(target, nodes.Name) and target.name == "secrets" and target.ctx == "load"


def _secret_misuse(ast: nodes.Template) -> str | None:
    """SECRET_USE_RULE when `secrets` appears anywhere but as a plain part of a top-level output."""
    plain = 0
    for statement in ast.body:
        if isinstance(statement, nodes.Output):
            plain += sum(1 for part in statement.nodes if _is_plain_secret(part))
    every = sum(1 for name in ast.find_all(nodes.Name) if name.name == "secrets")
    return SECRET_USE_RULE if every > plain else None


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


class _Budget:
    """Characters a result may still take as JSON (approximately: strings by length, others by a few)."""

    __slots__ = ("left", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.left = limit

    def spend(self, size: int) -> None:
        self.left -= size
        if self.left < 0:
            raise ValueProblem(f"the result is larger than {self.limit:,} characters of JSON")


def output_limit() -> int:
    """The bound of the render in progress (MAX_OUTPUT unless the caller set another)."""
    return _limit.get()


def with_output_limit(limit: int) -> Token[int]:
    return _limit.set(limit)


def reset_output_limit(token: Token[int]) -> None:
    _limit.reset(token)


def to_json_value(value: Any, budget: _Budget | None = None) -> Any:
    """Check (and copy) a result so only JSON values leave the sandbox, within the output bound."""
    if budget is None:
        budget = _Budget(_limit.get())
    if isinstance(value, str):
        budget.spend(len(value) + 2)
        return value
    if value is None or isinstance(value, (bool, int, float)):
        budget.spend(8)
        return value
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Secrets):
        raise ValueProblem("read a secret by name, e.g. ${secrets.TOKEN}")
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for k, v in value.items():
            key = _json_key(k)
            budget.spend(len(key) + 4)
            out[key] = to_json_value(v, budget)
        return out
    if isinstance(value, (list, tuple, set, frozenset, Iterator)):
        items = []
        for v in value:
            budget.spend(1)
            items.append(to_json_value(v, budget))
        return items
    if isinstance(value, (datetime, date, dtime)):
        budget.spend(34)
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
