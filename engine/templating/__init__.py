"""Templating: the `${...}` sandbox that pipeline steps and keys are rendered in (pure; no I/O).

The door of the templating room. See `rendering` for the syntax and rules.
"""

from __future__ import annotations

from pao_orchestrator.engine.templating.checks import (
    ALLOWED_ROOTS,
    check_pipeline_templates,
    check_template,
    references,
)
from pao_orchestrator.engine.templating.errors import TemplateError
from pao_orchestrator.engine.templating.rendering import build_context, is_templated, needs_isolation, render
from pao_orchestrator.engine.templating.sandbox import MAX_OUTPUT, MAX_TEMPLATE_LENGTH, SIMPLE_FILTERS
from pao_orchestrator.engine.templating.secrets import (
    MIN_SECRET_LENGTH,
    REDACTED,
    Secrets,
    check_secrets,
    redact,
    seal,
    secret_in_keys,
    unseal,
)

__all__ = [
    "ALLOWED_ROOTS",
    "MAX_OUTPUT",
    "MAX_TEMPLATE_LENGTH",
    "MIN_SECRET_LENGTH",
    "REDACTED",
    "SIMPLE_FILTERS",
    "Secrets",
    "TemplateError",
    "build_context",
    "check_pipeline_templates",
    "check_secrets",
    "check_template",
    "is_templated",
    "needs_isolation",
    "redact",
    "references",
    "render",
    "seal",
    "secret_in_keys",
    "unseal",
]
