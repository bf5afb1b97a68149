"""What a downstream tool call or listing produced: ToolOutput, ToolListing and the content-block rules."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

import mcp_types

from pao_orchestrator.engine.downstream.errors import DownstreamError


@dataclass(frozen=True)
class ToolOutput:
    """What a tool call produced.

    `value` is the structured content when the tool gives it; else the text
    content parsed as JSON when it parses; else the text (several text blocks
    joined by newlines). Non-text blocks are described as dicts
    (`{"type": "image", "mimeType": ...}`) without their data; when the content
    mixes blocks, `value` is the list of per-block values.
    """

    value: Any
    is_error: bool
    text: str


@dataclass(frozen=True)
class ToolListing:
    """One server's tools, or why they could not be listed (the server failed to start, ...)."""

    server: str
    tools: list[mcp_types.Tool] = field(default_factory=list)
    error: DownstreamError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def _describe_block(block: mcp_types.ContentBlock) -> Any:
    if isinstance(block, mcp_types.TextContent):
        return block.text
    if isinstance(block, mcp_types.ImageContent | mcp_types.AudioContent):
        return {"type": block.type, "mimeType": block.mime_type}
    if isinstance(block, mcp_types.ResourceLink):
        link: dict[str, Any] = {"type": "resource_link", "uri": block.uri, "name": block.name}
        if block.mime_type is not None:
            link["mimeType"] = block.mime_type
        return link
    if isinstance(block, mcp_types.EmbeddedResource):
        resource = block.resource
        described: dict[str, Any] = {"type": "resource", "uri": resource.uri}
        if resource.mime_type is not None:
            described["mimeType"] = resource.mime_type
        if isinstance(resource, mcp_types.TextResourceContents):
            described["text"] = resource.text
        return described
    return {"type": getattr(block, "type", type(block).__name__)}


def _parse_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def tool_output(result: mcp_types.CallToolResult) -> ToolOutput:
    """Convert an SDK result into a ToolOutput (see its docstring for the rules)."""
    texts = [block.text for block in result.content if isinstance(block, mcp_types.TextContent)]
    text = "\n".join(texts)
    value: Any
    if result.structured_content is not None:
        value = result.structured_content
    elif not result.content:
        value = None
    elif len(texts) == len(result.content):
        value = _parse_text(text)
    elif len(result.content) == 1:
        value = _describe_block(result.content[0])
    else:
        value = [_describe_block(block) for block in result.content]
    return ToolOutput(value=value, is_error=bool(result.is_error), text=text)
