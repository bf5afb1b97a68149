"""Static checks of pipeline templates before a task is saved.

`check_pipeline_templates` and `check_template` parse every template, and
reject unknown names and references to the current or later steps, with
`InvalidArgument` naming the field path; `references` lists what templates read.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any, Final

from jinja2.exceptions import TemplateSyntaxError

from pao_orchestrator.contracts import BUILTIN_SERVER
from pao_orchestrator.engine.templating.errors import TemplateError, join_path, kind_of, list_names, quote
from pao_orchestrator.engine.templating.sandbox import SIMPLE_FILTERS, Path, parse_template, syntax_message, unescape
from pao_orchestrator.errors import InvalidArgument

ALLOWED_ROOTS: Final = frozenset({"steps", "trigger", "task", "run", "secrets", "now", "event", "condition"})
"""Top-level names a pipeline template may read (plus earlier steps' save_as names)."""


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
            compiled = parse_template(unescape(leaf))
        except TemplateSyntaxError as exc:
            raise TemplateError(f"{quote(leaf)}: syntax error: {syntax_message(exc)}") from None
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
    simple_only: bool = False
    # Names templates can never read here, with why (e.g. 'event' on a clock-driven task).
    absent: Mapping[str, str] = dataclass_field(default_factory=dict)
    # Why this field may not read secrets at all (a built-in step hands its arguments back), or None.
    secrets_refused: str | None = None


def check_template(
    value: Any,
    field: str,
    allowed_roots: Iterable[str],
    known_steps: Iterable[str] = (),
    *,
    simple_only: bool = False,
    absent: Mapping[str, str] | None = None,
) -> None:
    """Check every template inside `value` before it is saved; InvalidArgument naming `field` if one is wrong.

    Templates must parse, may read only `allowed_roots`, and `steps.<id>` only
    for ids in `known_steps`. With `simple_only`, they must also be simple (value
    lookups, cheap filters, tests and conditions; see `sandbox.Parsed.simple`), as
    keys must be: they are rendered while runs are created. `absent` maps names that
    exist in general but never in this context to the reason, for the message.
    """
    _check_value(
        value, field, _Scope(frozenset(allowed_roots), tuple(known_steps), simple_only=simple_only, absent=absent or {})
    )


def check_pipeline_templates(
    pipeline: Sequence[Mapping[str, Any]],
    *,
    allowed_roots: Iterable[str] = ALLOWED_ROOTS,
    field: str = "payload.pipeline",
    preceding: Sequence[Mapping[str, Any]] = (),
) -> None:
    """Check each step's `with` templates against what that step may read: the roots and EARLIER steps.

    `preceding` are steps that ran before the first of `pipeline` (the pipeline, for `on_failure`
    steps): they are in scope and are not checked again. Also rejects a `save_as` that would shadow
    one of `allowed_roots`.
    """
    roots = frozenset(allowed_roots)
    ids: list[str | None] = []
    names: list[str | None] = []
    for step in preceding:
        step_id, save_as = step.get("id"), step.get("save_as")
        ids.append(step_id if isinstance(step_id, str) else None)
        names.append(save_as if isinstance(save_as, str) else None)
    offset = len(ids)
    for index, step in enumerate(pipeline):
        if not isinstance(step, Mapping):
            raise InvalidArgument(f"{field}[{index}]", f"a step must be an object, got {kind_of(step)}")
        step_id, save_as = step.get("id"), step.get("save_as")
        ids.append(step_id if isinstance(step_id, str) else None)
        names.append(save_as if isinstance(save_as, str) else None)
        if isinstance(save_as, str) and save_as in roots:
            raise InvalidArgument(
                f"{field}[{index}].save_as",
                f"{save_as!r} is a built-in name; choose another (built-in names: {list_names(sorted(roots))})",
            )
    for index, step in enumerate(pipeline):
        if "with" not in step:
            continue
        at = offset + index
        earlier_names = {n for n in names[:at] if n}
        scope = _Scope(
            roots=roots | earlier_names,
            steps=tuple(i for i in ids[:at] if i),
            current_step=ids[at],
            own_name=names[at],
            later_steps={s: j - offset for j, s in enumerate(ids) if j > at and s},
            later_names={n: j - offset for j, n in enumerate(names) if j > at and n and n not in earlier_names},
            secrets_refused=_BUILTIN_SECRETS if _is_builtin(step.get("uses")) else None,
        )
        _check_value(step["with"], f"{field}[{index}].with", scope)


_BUILTIN_SECRETS: Final = (
    "a built-in pao step cannot receive a secret: its arguments come back as its output or go into "
    "an event, where later steps could read and transform them; send secrets only to downstream tools"
)


def _is_builtin(uses: Any) -> bool:
    return isinstance(uses, str) and uses.split(".", 1)[0] == BUILTIN_SERVER


def _string_leaves(value: Any, field: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield value, field
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield from _string_leaves(item, join_path(field, key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _string_leaves(item, f"{field}[{index}]")


def _check_value(value: Any, field: str, scope: _Scope) -> None:
    for leaf, leaf_field in _string_leaves(value, field):
        if "${" in leaf:
            problem = _check_source(leaf, scope)
            if problem is not None:
                raise InvalidArgument(leaf_field, f"{quote(leaf)}: {problem}")


def _check_source(source: str, scope: _Scope) -> str | None:
    try:
        compiled = parse_template(unescape(source))
    except TemplateSyntaxError as exc:
        return f"syntax error: {syntax_message(exc)}"
    if compiled.includes:
        return "include, import and extends are not available in pipeline templates"
    if compiled.secret_misuse is not None:
        return compiled.secret_misuse
    if compiled.dunder is not None:
        return f"{compiled.dunder!r}: names with double underscores are not available in templates"
    if scope.secrets_refused is not None and any(chain[0] == "secrets" for chain in compiled.chains):
        return scope.secrets_refused
    if scope.simple_only and not compiled.simple:
        return (
            "a key may only read values, with filters such as lower, trim or default, tests and "
            f"if/else (filters: {', '.join(sorted(SIMPLE_FILTERS))}); loops, calls, assignments and "
            "operators that build values are for pipeline steps"
        )
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
    if root in scope.absent:
        return f"{root!r} {scope.absent[root]}; available: {list_names(sorted(scope.roots))}"
    note = ""
    if root == scope.own_name:
        note = f"; {root!r} is this step's own save_as, and a step cannot read its own output"
    elif root in scope.later_names:
        note = (
            f"; {root!r} is saved by a later step (pipeline[{scope.later_names[root]}]), "
            "and a step can only read earlier steps"
        )
    return f"unknown name {root!r}{note}; available: {list_names(sorted(scope.roots))}"


def _check_step_ref(step_id: str | int, scope: _Scope) -> str | None:
    if step_id in scope.steps:
        return None
    earlier = list_names(scope.steps, "(none: this is the first step)")
    if step_id == scope.current_step:
        return f"step {step_id!r} is this step; a step cannot read its own output; earlier steps: {earlier}"
    if isinstance(step_id, str) and step_id in scope.later_steps:
        return (
            f"step {step_id!r} runs after this one (pipeline[{scope.later_steps[step_id]}]), "
            f"and a step can only read earlier steps; earlier steps: {earlier}"
        )
    return f"no step {step_id!r} before this one; earlier steps: {earlier}"
