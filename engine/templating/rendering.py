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

Where the parts live: this module renders and builds the context; `sandbox`
holds the environment, filters and compilation, `checks` the checks before
saving, `secrets` secrets and `redact`, and `errors` the errors and message
wording. The public names are importable from the package (the room's door).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, date, datetime
from datetime import time as dtime
from typing import Any
from uuid import UUID

import jinja2
from jinja2.exceptions import SecurityError, TemplateSyntaxError
from jinja2.utils import missing

from pao_orchestrator.engine.templating.checks import ALLOWED_ROOTS
from pao_orchestrator.engine.templating.errors import (
    MissingValue,
    TemplateError,
    ValueProblem,
    join_path,
    kind_of,
    list_names,
    quote,
)
from pao_orchestrator.engine.templating.sandbox import (
    Compiled,
    Path,
    compile_template,
    output_limit,
    parse_template,
    reset_output_limit,
    syntax_message,
    to_json_value,
    unescape,
    with_output_limit,
)
from pao_orchestrator.engine.templating.secrets import Secrets

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


def needs_isolation(value: Any) -> bool:
    """Whether rendering `value` could cost more than reading what it reads.

    False when every template in it is simple (value lookups, cheap filters, tests and conditions:
    see `Parsed.simple`), so it renders in-process in time linear in what it reads; True when one
    could loop, call, build large values or fail to parse: render it in an isolated process with a
    deadline and a memory limit.
    """
    if isinstance(value, str):
        if "${" not in value:
            return False
        try:
            return not parse_template(unescape(value)).simple
        except TemplateSyntaxError:
            return True
    if isinstance(value, Mapping):
        return any(needs_isolation(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return any(needs_isolation(v) for v in value)
    return False


def render(value: Any, context: Mapping[str, Any], *, field: str = "", limit: int | None = None) -> Any:
    """Render every string leaf of `value` against `context` (see the module docstring).

    `field` (e.g. "with") prefixes error messages with the path of the failing leaf. `limit` bounds
    what each template produces (characters of text, or of a value's JSON; default MAX_OUTPUT).
    """
    token = with_output_limit(limit) if limit is not None else None
    try:
        return _render(value, context, field)
    finally:
        if token is not None:
            reset_output_limit(token)


def _render(value: Any, context: Mapping[str, Any], field: str) -> Any:
    if isinstance(value, str):
        return _render_str(value, context, field)
    if isinstance(value, Mapping):
        return {k: _render(v, context, join_path(field, k)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_render(v, context, f"{field}[{i}]") for i, v in enumerate(value)]
    return value


def _render_str(source: str, context: Mapping[str, Any], field: str) -> Any:
    if "${" not in source:
        return source
    compiled: Compiled | None = None
    try:
        compiled = compile_template(unescape(source))
        if compiled.parsed.secret_misuse is not None:
            # Checked when the task was saved; checked again here, before anything is evaluated.
            raise ValueProblem(compiled.parsed.secret_misuse)
        ctx = compiled.template.new_context(dict(context))
        if compiled.exact:
            for _ in compiled.template.root_render_func(ctx):
                pass
            return to_json_value(ctx.vars["result"])
        # Chunk by chunk, so text that grows past the bound stops there instead of filling memory.
        limit = output_limit()
        size = 0
        chunks: list[str] = []
        for chunk in compiled.template.root_render_func(ctx):
            size += len(chunk)
            if size > limit:
                raise ValueProblem(f"the text is longer than {limit:,} characters")
            chunks.append(chunk)
        return "".join(chunks)
    except MemoryError:
        raise  # the isolated render process reports it (and is replaced)
    except Exception as exc:
        message = f"{quote(source)}: {_runtime_message(exc, compiled, context)}"
    if field:
        message = f"{field}: {message}"
    secrets = context.get("secrets")
    if isinstance(secrets, Secrets):
        message = secrets.redact(message)
    # Not chained: the original exception may quote secret values.
    raise TemplateError(message)


def _runtime_message(exc: Exception, compiled: Compiled | None, context: Mapping[str, Any]) -> str:
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc.message}"
    if isinstance(exc, MissingValue):
        return _explain_missing(exc, compiled, context)
    if isinstance(exc, TemplateSyntaxError):
        return f"syntax error: {syntax_message(exc)}"
    if isinstance(exc, jinja2.TemplateError):
        return exc.message or type(exc).__name__
    if isinstance(exc, (ValueProblem, TemplateError)):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


# --------------------------------------------------------------------------- messages


def _format_path(path: Path) -> str:
    text = str(path[0])
    for key in path[1:]:
        if isinstance(key, str) and key.isidentifier():
            text += f".{key}"
        else:
            text += f"[{key!r}]"
    return text


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


def _locate(compiled: Compiled | None, context: Mapping[str, Any], obj: Any, name: Any) -> Path | None:
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


def _explain_missing(exc: MissingValue, compiled: Compiled | None, context: Mapping[str, Any]) -> str:
    obj, name = exc.obj, exc.name
    if obj is missing:
        if name is None:
            return exc.message or "undefined value"
        return f"unknown name {name!r}; available: {list_names(sorted(context))}"
    if isinstance(obj, Secrets):
        return obj.missing_message(name)
    path = _locate(compiled, context, obj, name)
    if path == ("steps",) and isinstance(obj, Mapping):
        return f"no step {name!r} before this one; earlier steps: {list_names(obj)}"
    if path is not None and len(path) == 2 and path[0] == "steps":
        subject = f"step {path[1]!r} output"
    elif path is not None:
        subject = f"'{_format_path(path)}'"
    else:
        subject = "the value"
    if isinstance(obj, Mapping):
        return f"{subject} has no field {name!r}; fields: {list_names(obj, '(none: it is empty)')}"
    if isinstance(obj, (list, tuple)) and isinstance(name, int):
        return f"{subject} is a list of {len(obj)} items; there is no item {name}"
    message = f"{subject} is {kind_of(obj)}, not an object; it has no field {name!r}"
    if path == ("event",) and obj is None:
        message += " (this run was not started by an event)"
    if path == ("condition",) and obj is None:
        message += " (this run was not started by a condition)"
    return message


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
    trigger (kind, scheduled_for, event, ...), event (= trigger.event, or null), condition
    (= trigger.condition: `result`, the probe's output, on a condition task's run, else null),
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
        condition=plain_trigger.get("condition"),
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
