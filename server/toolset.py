"""Tools as the model sees them: strict arguments, plain errors, compact text, lean schemas.

`ToolSet` collects tools with the same `tool()` / `add_tool()` calls as
`MCPServer`, as `StrictTool`s, which the server is then built with. A
`StrictTool` refuses an argument its schema does not name (saying which valid
name is closest), reports a validation error as one plain sentence per field,
and gives its structured content as compact text: the text block is never
larger than the structured content.
"""

from __future__ import annotations

import difflib
import inspect
import json
from collections.abc import Callable
from typing import Any, TypeVar

from mcp.server.mcpserver.exceptions import ResourceError, ToolError, UnexpectedToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from pydantic import ValidationError

F = TypeVar("F", bound=Callable[..., Any])


def _strip(schema: Any) -> Any:
    if isinstance(schema, list):
        return [_strip(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    options = schema.get("anyOf")
    if isinstance(options, list) and {"type": "null"} in options and schema.get("default", ...) is None:
        # An optional argument: omitting it is the way to say "none"; the null option and the null
        # default only repeat that (null is still accepted).
        rest = [o for o in options if o != {"type": "null"}]
        merged = {k: v for k, v in schema.items() if k not in ("anyOf", "default")}
        schema = {**merged, **rest[0]} if len(rest) == 1 else {**merged, "anyOf": rest}
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "title" and isinstance(value, str):
            continue
        if key in ("properties", "$defs") and isinstance(value, dict):
            out[key] = {name: _strip(sub) for name, sub in value.items()}
        else:
            out[key] = _strip(value)
    return out


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    ref = schema.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/") and "enum" in defs.get(ref[8:], {}):
        enum = {k: v for k, v in defs[ref[8:]].items() if k != "description"}
        return {**{k: v for k, v in schema.items() if k != "$ref"}, **enum}
    return {k: _inline(v, defs) for k, v in schema.items()}


def lean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` as the model needs it: no pydantic `title`s (property names stay), enums inline, no null
    option on optional arguments, no class docstrings of nested models."""
    stripped: dict[str, Any] = _strip(schema)
    defs = stripped.pop("$defs", {})
    out: dict[str, Any] = _inline(stripped, defs)
    kept = {
        name: {k: v for k, v in _inline(d, defs).items() if k != "description"}
        for name, d in defs.items()
        if "enum" not in d
    }
    if kept:
        out["$defs"] = kept
    return out


def _where(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out.replace("with_", "with") or "(arguments)"


def plain_errors(exc: ValidationError) -> str:
    """One plain sentence per field: where, and what is wrong (no type tags, no URLs, no input dumps)."""
    sentences: list[str] = []
    for err in exc.errors(include_url=False):
        where = _where(tuple(err["loc"]))
        message = "is required" if err["type"] == "missing" else str(err["msg"])
        message = message[0].lower() + message[1:] if message else "is not valid"
        sentence = f"{where}: {message.removeprefix('value error, ')}."
        if sentence not in sentences:
            sentences.append(sentence)
    return " ".join(sentences)


class StrictTool(Tool):
    """A tool that refuses unknown arguments and answers with compact text (see the module docstring)."""

    def known_arguments(self) -> list[str]:
        return list(self.parameters.get("properties", {}))

    def unknown_argument_problem(self, arguments: dict[str, Any]) -> str | None:
        known = self.known_arguments()
        unknown = [name for name in arguments if name not in known]
        if not unknown:
            return None
        sentences = []
        for name in unknown:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
            hint = f"did you mean '{close[0]}'?" if close else f"valid arguments: {', '.join(known) or 'none'}."
            sentences.append(f"{self.name} has no argument '{name}'; {hint}")
        return " ".join(sentences)

    async def run(self, arguments: dict[str, Any], context: Any, convert_result: bool = False) -> Any:
        problem = self.unknown_argument_problem(arguments)
        if problem is not None:
            raise ToolError(problem)
        try:
            self.fn_metadata.validate_arguments(arguments)
        except ValidationError as exc:
            raise ToolError(plain_errors(exc)) from exc
        try:
            result = await super().run(arguments, context, convert_result=convert_result)
        except UnexpectedToolError:
            raise  # a crash: the SDK's "Error executing tool <name>", its text kept on the server
        except ToolError as exc:
            # The SDK prefixes a deliberate error with "Error executing tool <name>: "; pao's (not found,
            # conflict, a bad argument) are already sentences an agent can act on, said as plainly as the
            # argument errors above.
            if isinstance(exc.__cause__, ToolError | ResourceError):
                raise ToolError(str(exc.__cause__)) from exc.__cause__
            raise
        if isinstance(result, CallToolResult) and result.structured_content is not None and not result.is_error:
            text = json.dumps(result.structured_content, separators=(",", ":"), ensure_ascii=False)
            return result.model_copy(update={"content": [TextContent(type="text", text=text)]})
        return result


class ToolSet:
    """Tools collected before the server is built (MCPServer's registration calls, same signatures)."""

    def __init__(self) -> None:
        self.tools: dict[str, StrictTool] = {}

    def add_tool(
        self,
        fn: Callable[..., Any],
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        publish: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        """Add `fn` as a tool; `publish` may shorten the input schema shown to clients (never widen what
        the arguments model accepts)."""
        text = inspect.cleandoc(description or fn.__doc__ or "")
        built = StrictTool.from_function(
            fn, name=name, title=title, description=text, annotations=annotations, **kwargs
        )
        assert isinstance(built, StrictTool)  # from_function builds `cls`
        tool = built
        schema = lean_schema(tool.parameters)
        tool.parameters = {**(publish(schema) if publish else schema), "additionalProperties": False}
        if tool.name in self.tools:
            raise ValueError(f"tool {tool.name!r} is registered twice")
        self.tools[tool.name] = tool

    def tool(
        self,
        name: str | None = None,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        **kwargs: Any,
    ) -> Callable[[F], F]:
        def register(fn: F) -> F:
            self.add_tool(fn, name=name, title=title, description=description, annotations=annotations, **kwargs)
            return fn

        return register


def types_only(keep: frozenset[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A `publish` that shows properties other than `keep` by type alone (for a tool whose arguments are
    another tool's, described there): no descriptions, bounds or nested models."""

    def publish(schema: dict[str, Any]) -> dict[str, Any]:
        properties: dict[str, Any] = {}
        for name, sub in schema.get("properties", {}).items():
            if name in keep:
                properties[name] = sub
            elif "$ref" in sub:
                properties[name] = {"type": "object"}
            else:
                properties[name] = {k: v for k, v in sub.items() if k in ("type", "enum")}
        out = {k: v for k, v in schema.items() if k not in ("properties", "$defs")}
        return {**out, "properties": properties}

    return publish
