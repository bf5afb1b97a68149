"""Pipeline templates: `${...}` expressions in a step's `with` arguments.

A step's arguments are rendered at run time against what the run knows so far
(see `build_context`): `${steps.weather.summary}`, `${trigger.kind}`,
`${secrets.TOKEN}`, `${now}`, and every earlier step's `save_as` name at top
level (`${weather.summary}`).

Syntax (Jinja2, sandboxed, with delimiters chosen so ordinary text - JSON,
shell snippets with `{{`, Markdown, `%` - never clashes):

* `${ expr }`            an expression; dotted access reads fields of objects.
* `${% if x %}...${% endif %}`  statements (if/for/set); rarely needed.
* `${# comment #}`       a comment, dropped from the output.
* `$${`                  a literal `${` (so `$${HOME}` renders as `${HOME}`).
  The escape applies anywhere in the string, including inside expressions.

Rendering rules (`render`):

* A string without `${` is returned as is, without touching Jinja.
* A string that is exactly one `${ expr }` (nothing around it) keeps the
  expression's type: an int stays an int, an object stays an object, null
  stays None. Generators (`map`, `select`, ...) become lists.
* A string mixing text and `${...}` renders to a string; objects and lists are
  written as JSON (`json.dumps`, one line), and so are booleans and null
  (`true`, `false`, `null`), so the text never shows Python reprs.
* Dict keys are never rendered; non-string leaves are returned unchanged.

Strictness: a missing name, step or field is an error (`TemplateError`, not
retryable) naming what is missing and what is available, never an empty
string. `${x | default('n/a')}` and `${x is defined}` handle optional fields.
Attribute access on an object always means its field: `${out.items}` reads the
field "items", never the dict method. Step outputs are plain JSON values.

Sandbox: `ImmutableSandboxedEnvironment` (no `_`-attributes, no mutating
methods) with no globals at all (no `range`, `lipsum`, `namespace`, ...), no
loader (no include/import), and size limits on `*` and `**`. Secrets are only
reachable as `${secrets.NAME}`, which reads `PAO_SECRET_NAME` and nothing else
from the environment; the `Secrets` object records what was read so callers
can `redact` those values before storing or logging anything.

Checks before a task is saved (`check_pipeline_templates`, `check_template`)
parse every template, and reject unknown names and references to the current
or later steps, with `InvalidArgument` naming the field path.

Filters: Jinja's built-ins plus `fromjson`; `tojson` writes plain JSON (no
HTML escaping); `int` and `float` fail on values they cannot convert unless a
default is given (`${x | int(0)}`) instead of silently returning 0.
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any, Final, cast
from uuid import UUID

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError, TemplateSyntaxError, UndefinedError
from jinja2.runtime import Context, StrictUndefined, Undefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import missing

from store.errors import InvalidArgument, StepError

__all__ = [
    "ALLOWED_ROOTS",
    "REDACTED",
    "SECRET_PREFIX",
    "Secrets",
    "TemplateError",
    "build_context",
    "check_pipeline_templates",
    "check_template",
    "redact",
    "references",
    "render",
]

ALLOWED_ROOTS: Final = frozenset({"steps", "trigger", "task", "run", "secrets", "now", "event"})
"""Top-level names a pipeline template may read (plus earlier steps' save_as names)."""

SECRET_PREFIX: Final = "PAO_SECRET_"
REDACTED: Final = "***"
MIN_REDACT_LENGTH: Final = 4

_ESCAPE: Final = "$${"
_ESCAPED: Final = "${'${'}"
_MAX_SEQUENCE: Final = 1_000_000
_MAX_POWER_BITS: Final = 65_536
_QUOTE_LIMIT: Final = 200
_LIST_LIMIT: Final = 40

Path = tuple[str | int, ...]


class TemplateError(StepError):
    """A template failed at run time (missing field, bad value, sandbox violation); never retryable."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


class _ValueProblem(Exception):
    """Raised inside rendering (filters, finalize) and turned into a TemplateError quoting the template."""


class _Missing(UndefinedError):
    """An undefined value was used; carries the object and the name that was looked up."""

    def __init__(self, message: str | None = None, *, obj: Any = missing, name: Any = None) -> None:
        super().__init__(message)
        self.obj = obj
        self.name = name


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
            exc = cast("type[UndefinedError]", functools.partial(_Missing, obj=obj, name=name))
        super().__init__(hint, obj, name, exc)


# --------------------------------------------------------------------------- secrets


class Secrets:
    """`${secrets.NAME}`: reads only `PAO_SECRET_<NAME>`, and remembers which values were read.

    The environment is filtered once, at construction: nothing without the
    prefix is kept, so no template can reach `DATABASE_URL` and the like.
    Create one per run; `used_values()` then lists what must be redacted.
    """

    __slots__ = ("_used", "_values")

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        source = os.environ if environ is None else environ
        self._values: dict[str, str] = {
            key[len(SECRET_PREFIX) :]: value
            for key, value in source.items()
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
    """A deep copy of `value` with every secret value (of 4+ characters) in strings and keys replaced by ***.

    Shorter values are left alone: redacting "1" or "ab" everywhere would
    destroy unrelated text and protect nothing.
    """
    wanted = {s for s in secret_values if isinstance(s, str) and len(s) >= MIN_REDACT_LENGTH}
    if not wanted:
        return _redact(value, None)
    alternatives = sorted(wanted, key=len, reverse=True)  # longest first when one contains another
    return _redact(value, re.compile("|".join(re.escape(s) for s in alternatives)))


def _redact(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if isinstance(value, str):
        return pattern.sub(REDACTED, value) if pattern is not None else value
    if isinstance(value, Mapping):
        return {_redact(k, pattern): _redact(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact(v, pattern) for v in value]
    if isinstance(value, tuple):
        return tuple(_redact(v, pattern) for v in value)
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return copy.deepcopy(value)


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
    return _dumps(_to_json_value(value))


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
    raise _ValueProblem(f"int: cannot convert {_short_repr(value)} to an integer; int(0) gives a fallback")


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
    raise _ValueProblem(f"float: cannot convert {_short_repr(value)} to a number; float(0) gives a fallback")


def _fromjson_filter(value: Any) -> Any:
    _fail_if_undefined(value)
    if not isinstance(value, (str, bytes)):
        raise _ValueProblem(f"fromjson: expects a string, got {_kind(value)}")
    try:
        return json.loads(value)
    except ValueError as exc:
        raise _ValueProblem(f"fromjson: not valid JSON ({exc}): {_short_repr(value)}") from None


def _tojson_filter(value: Any, indent: int | None = None) -> str:
    return _dumps(_to_json_value(value), indent=indent)


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
class _Compiled:
    template: jinja2.Template
    exact: bool  # the whole string is one `${ expr }`: evaluate and keep the type
    chains: tuple[Path, ...]  # name.field[...] paths the template reads, in source order
    undeclared: frozenset[str]  # top-level names it reads
    includes: bool  # uses include/import/extends


def _unescape(source: str) -> str:
    return source.replace(_ESCAPE, _ESCAPED)


@functools.lru_cache(maxsize=4096)
def _compile(source: str) -> _Compiled:
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
    return _Compiled(template, expression is not None, chains, frozenset(undeclared), includes)


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


# --------------------------------------------------------------------------- rendering


def is_templated(value: Any) -> bool:
    """Whether any string leaf of `value` holds a `${`: if not, `render` would return it unchanged."""
    if isinstance(value, str):
        return "${" in value
    if isinstance(value, Mapping):
        return any(is_templated(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(is_templated(v) for v in value)
    return False


def render(value: Any, context: Mapping[str, Any], *, field: str = "") -> Any:
    """Render every string leaf of `value` against `context` (see the module docstring).

    `field` (e.g. "with") prefixes error messages with the path of the failing leaf.
    """
    if isinstance(value, str):
        return _render_str(value, context, field)
    if isinstance(value, Mapping):
        return {k: render(v, context, field=_join(field, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [render(v, context, field=f"{field}[{i}]") for i, v in enumerate(value)]
    return value


def _render_str(source: str, context: Mapping[str, Any], field: str) -> Any:
    if "${" not in source:
        return source
    compiled: _Compiled | None = None
    try:
        compiled = _compile(_unescape(source))
        if compiled.exact:
            ctx = compiled.template.new_context(dict(context))
            for _ in compiled.template.root_render_func(ctx):
                pass
            return _to_json_value(ctx.vars["result"])
        return compiled.template.render(context)
    except Exception as exc:
        message = f"{_quote(source)}: {_runtime_message(exc, compiled, context)}"
    if field:
        message = f"{field}: {message}"
    secrets = context.get("secrets")
    if isinstance(secrets, Secrets):
        message = secrets.redact(message)
    # Not chained: the original exception may quote secret values.
    raise TemplateError(message)


def _runtime_message(exc: Exception, compiled: _Compiled | None, context: Mapping[str, Any]) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc.message}"
    if isinstance(exc, _Missing):
        return _explain_missing(exc, compiled, context)
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {_syntax_message(exc)}"
    if isinstance(exc, jinja2.TemplateError):
        return exc.message or type(exc).__name__
    if isinstance(exc, (_ValueProblem, TemplateError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _to_json_value(value: Any) -> Any:
    """Check (and copy) a result so only JSON values leave the sandbox."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()
    if isinstance(value, Secrets):
        raise _ValueProblem("read a secret by name, e.g. ${secrets.TOKEN}")
    if isinstance(value, Mapping):
        return {_json_key(k): _to_json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset, Iterator)):
        return [_to_json_value(v) for v in value]
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    raise _ValueProblem(
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
    raise _ValueProblem(f"an object key is a {type(key).__name__}; keys must be strings")


# --------------------------------------------------------------------------- messages


def _quote(source: str) -> str:
    if len(source) > _QUOTE_LIMIT:
        source = source[: _QUOTE_LIMIT - 3] + "..."
    return f"'{source}'"


def _short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _join(field: str, key: Any) -> str:
    return f"{field}.{key}" if field else str(key)


def _names(keys: Iterable[Any], empty: str = "(none)") -> str:
    names = [str(k) for k in keys]
    if not names:
        return empty
    if len(names) > _LIST_LIMIT:
        return ", ".join(names[:_LIST_LIMIT]) + f", ... ({len(names) - _LIST_LIMIT} more)"
    return ", ".join(names)


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, Mapping):
        return "an object"
    return f"a {type(value).__name__}"


def _format_path(path: Path) -> str:
    text = str(path[0])
    for key in path[1:]:
        if isinstance(key, str) and key.isidentifier():
            text += f".{key}"
        else:
            text += f"[{key!r}]"
    return text


def _syntax_message(exc: TemplateSyntaxError) -> str:
    message = exc.message or "invalid template"
    if message.startswith("No filter named"):
        message += f" Filters: {', '.join(sorted(_env.filters))}"
    elif message.startswith("No test named"):
        message += f" Tests: {', '.join(sorted(_env.tests))}"
    if exc.source and "\n" in exc.source:
        message = f"line {exc.lineno}: {message}"
    return message


def _step(obj: Any, key: Any) -> Any:
    """One lookup the way templates do it, without recording secrets; `missing` when absent."""
    if isinstance(obj, Secrets):
        return missing
    if isinstance(obj, Mapping):
        try:
            return obj[key]
        except (KeyError, TypeError):
            return missing
    if isinstance(obj, (list, tuple)) and isinstance(key, int):
        return obj[key] if -len(obj) <= key < len(obj) else missing
    return missing


def _locate(compiled: _Compiled | None, context: Mapping[str, Any], obj: Any, name: Any) -> Path | None:
    """The path (as written in the template) at which `obj` was found when `name` was looked up on it."""
    if compiled is None:
        return None
    fallback: Path | None = None
    for chain in compiled.chains:
        current = context.get(str(chain[0]), missing)
        for depth in range(1, len(chain) + 1):
            if current is missing:
                break
            if current is obj:
                if depth < len(chain) and chain[depth] == name:
                    return chain[:depth]
                fallback = fallback or chain[:depth]
            if depth < len(chain):
                current = _step(current, chain[depth])
    return fallback


def _explain_missing(exc: _Missing, compiled: _Compiled | None, context: Mapping[str, Any]) -> str:
    obj, name = exc.obj, exc.name
    if obj is missing:
        if name is None:
            return exc.message or "undefined value"
        return f"unknown name {name!r}; available: {_names(sorted(context))}"
    if isinstance(obj, Secrets):
        return obj.missing_message(name)
    path = _locate(compiled, context, obj, name)
    if path == ("steps",) and isinstance(obj, Mapping):
        return f"no step {name!r} before this one; earlier steps: {_names(obj)}"
    if path is not None and len(path) == 2 and path[0] == "steps":
        subject = f"step {path[1]!r} output"
    elif path is not None:
        subject = f"'{_format_path(path)}'"
    else:
        subject = "the value"
    if isinstance(obj, Mapping):
        return f"{subject} has no field {name!r}; fields: {_names(obj, '(none: it is empty)')}"
    if isinstance(obj, (list, tuple)) and isinstance(name, int):
        return f"{subject} is a list of {len(obj)} items; there is no item {name}"
    message = f"{subject} is {_kind(obj)}, not an object; it has no field {name!r}"
    if path == ("event",) and obj is None:
        message += " (this run was not started by an event)"
    return message


# --------------------------------------------------------------------------- static checks


def references(value: Any) -> set[Path]:
    """The paths every template inside `value` reads: ('steps', 'weather', 'summary'), ('now',), ...

    Paths start with a top-level name and stop at the first dynamic subscript;
    names bound inside the template (set, for) are not included. Raises
    TemplateError if a template does not parse.
    """
    found: set[Path] = set()
    for leaf, _ in _string_leaves(value, ""):
        if "${" not in leaf:
            continue
        try:
            compiled = _compile(_unescape(leaf))
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{_quote(leaf)}: syntax error: {_syntax_message(exc)}") from None
        found.update(compiled.chains)
    return found


@dataclass(frozen=True)
class _Scope:
    roots: frozenset[str]
    steps: tuple[str, ...]
    current_step: str | None = None
    own_name: str | None = None
    later_steps: Mapping[str, int] = dataclass_field(default_factory=dict)
    later_names: Mapping[str, int] = dataclass_field(default_factory=dict)


def check_template(value: Any, field: str, allowed_roots: Iterable[str], known_steps: Iterable[str] = ()) -> None:
    """Check every template inside `value` before it is saved; InvalidArgument naming `field` if one is wrong.

    Templates must parse, may read only `allowed_roots`, and `steps.<id>` only
    for ids in `known_steps`.
    """
    _check_value(value, field, _Scope(frozenset(allowed_roots), tuple(known_steps)))


def check_pipeline_templates(
    pipeline: Sequence[Mapping[str, Any]],
    *,
    allowed_roots: Iterable[str] = ALLOWED_ROOTS,
    field: str = "payload.pipeline",
) -> None:
    """Check each step's `with` templates against what that step may read: the roots and EARLIER steps.

    Also rejects a `save_as` that would shadow one of `allowed_roots`.
    """
    roots = frozenset(allowed_roots)
    ids: list[str | None] = []
    names: list[str | None] = []
    for index, step in enumerate(pipeline):
        if not isinstance(step, Mapping):
            raise InvalidArgument(f"{field}[{index}]", f"a step must be an object, got {_kind(step)}")
        step_id, save_as = step.get("id"), step.get("save_as")
        ids.append(step_id if isinstance(step_id, str) else None)
        names.append(save_as if isinstance(save_as, str) else None)
        if isinstance(save_as, str) and save_as in roots:
            raise InvalidArgument(
                f"{field}[{index}].save_as",
                f"{save_as!r} is a built-in name; choose another (built-in names: {_names(sorted(roots))})",
            )
    for index, step in enumerate(pipeline):
        if "with" not in step:
            continue
        earlier_names = {n for n in names[:index] if n}
        scope = _Scope(
            roots=roots | earlier_names,
            steps=tuple(i for i in ids[:index] if i),
            current_step=ids[index],
            own_name=names[index],
            later_steps={s: j for j, s in enumerate(ids) if j > index and s},
            later_names={n: j for j, n in enumerate(names) if j > index and n and n not in earlier_names},
        )
        _check_value(step["with"], f"{field}[{index}].with", scope)


def _string_leaves(value: Any, field: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield value, field
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _string_leaves(item, _join(field, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _string_leaves(item, f"{field}[{index}]")


def _check_value(value: Any, field: str, scope: _Scope) -> None:
    for leaf, leaf_field in _string_leaves(value, field):
        if "${" in leaf:
            problem = _check_source(leaf, scope)
            if problem is not None:
                raise InvalidArgument(leaf_field, f"{_quote(leaf)}: {problem}")


def _check_source(source: str, scope: _Scope) -> str | None:
    try:
        compiled = _compile(_unescape(source))
    except TemplateSyntaxError as exc:
        return f"syntax error: {_syntax_message(exc)}"
    if compiled.includes:
        return "include, import and extends are not available in pipeline templates"
    checked: set[str] = set()
    for chain in compiled.chains:
        root = str(chain[0])
        if root not in scope.roots:
            return _unknown_root(root, scope)
        if root == "secrets" and (len(chain) < 2 or not isinstance(chain[1], str)):
            return "read a secret by a fixed name, e.g. ${secrets.TOKEN}"
        if root == "steps" and len(chain) >= 2:
            problem = _check_step_ref(chain[1], scope)
            if problem is not None:
                return problem
        checked.add(root)
    for root in sorted(compiled.undeclared - checked):
        if root not in scope.roots:
            return _unknown_root(root, scope)
    return None


def _unknown_root(root: str, scope: _Scope) -> str:
    note = ""
    if root == scope.own_name:
        note = f"; {root!r} is this step's own save_as, and a step cannot read its own output"
    elif root in scope.later_names:
        note = (
            f"; {root!r} is saved by a later step (pipeline[{scope.later_names[root]}]), "
            "and a step can only read earlier steps"
        )
    return f"unknown name {root!r}{note}; available: {_names(sorted(scope.roots))}"


def _check_step_ref(step_id: str | int, scope: _Scope) -> str | None:
    if step_id in scope.steps:
        return None
    earlier = _names(scope.steps, "(none: this is the first step)")
    if step_id == scope.current_step:
        return f"step {step_id!r} is this step; a step cannot read its own output; earlier steps: {earlier}"
    if isinstance(step_id, str) and step_id in scope.later_steps:
        return (
            f"step {step_id!r} runs after this one (pipeline[{scope.later_steps[step_id]}]), "
            f"and a step can only read earlier steps; earlier steps: {earlier}"
        )
    return f"no step {step_id!r} before this one; earlier steps: {earlier}"


# --------------------------------------------------------------------------- context


def build_context(
    *,
    steps: Mapping[str, Any],
    saved: Mapping[str, Any],
    trigger: Mapping[str, Any],
    task: Mapping[str, Any],
    run: Mapping[str, Any],
    secrets: Secrets,
    now: datetime,
) -> dict[str, Any]:
    """The names templates can read.

    steps (id -> output of each earlier step), every save_as name at top level,
    trigger (kind, scheduled_for, event, ...), event (= trigger.event, or null),
    task, run (id, attempt), secrets, and now (ISO 8601 in UTC, seconds).
    Datetimes and UUIDs inside trigger/task/run become strings.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    plain_trigger = _plain(trigger)
    context: dict[str, Any] = {}
    for name, output in saved.items():
        if name in ALLOWED_ROOTS:
            raise TemplateError(f"save_as name {name!r} clashes with the built-in name {name!r}")
        context[name] = output
    context.update(
        steps=dict(steps),
        trigger=plain_trigger,
        event=plain_trigger.get("event"),
        task=_plain(task),
        run=_plain(run),
        secrets=secrets,
        now=now.astimezone(UTC).isoformat(timespec="seconds"),
    )
    return context


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_plain(v) for v in value]
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(UTC).isoformat()
    if isinstance(value, (datetime, date, dtime)):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value
