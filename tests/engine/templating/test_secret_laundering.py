"""A secret can only be written out whole into a downstream call's arguments: every transformation
is refused before the task is saved (naming the field) and again before anything renders."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from pao_orchestrator.engine.templating import (
    ALLOWED_ROOTS,
    MIN_SECRET_LENGTH,
    Secrets,
    TemplateError,
    build_context,
    check_pipeline_templates,
    check_secrets,
    render,
)
from pao_orchestrator.errors import ConfigurationError, InvalidArgument

SECRET = "s3cr3t-TOKEN-value-9f8e"
LAUNDERING = [
    "${secrets.TOKEN|reverse}",
    "${secrets.TOKEN|list}",
    "${secrets.TOKEN|upper}",
    "${secrets.TOKEN[1:]}",
    "${secrets.TOKEN|join(' ')}",
    "${secrets.TOKEN|list|int}",
    "${secrets.TOKEN|list|first}",
    "${secrets.TOKEN ~ ''}",
    "${secrets.TOKEN == 'abc'}",
    "x${% if secrets.TOKEN.startswith('s') %}y${% endif %}",
    "${% for c in secrets.TOKEN %}${c}${% endfor %}",
    "${% set t = secrets.TOKEN %}${t}",
    "${% set secrets = 1 %}${secrets}",
    "${secrets.TOKEN|default('x')}",
    "${ {'a': secrets.TOKEN} }",
    "${ [secrets.TOKEN] }",
    "${secrets['TO' ~ 'KEN']}",
    "${% if true %}${secrets.TOKEN}${% endif %}",
]
PLAIN = [
    "${secrets.TOKEN}",
    "Bearer ${secrets.TOKEN}",
    "${secrets['TOKEN']}:${steps.a.x|upper}",
    "a $${b} ${secrets.TOKEN}",
]


def context() -> dict[str, object]:
    return build_context(
        steps={"a": {"x": "y"}},
        saved={},
        trigger={"kind": "manual"},
        task={"id": "t", "title": "t"},
        run={"id": "r", "attempt": 1},
        secrets=Secrets({"PAO_SECRET_TOKEN": SECRET}),
        now=datetime.now(UTC),
    )


def pipeline(template: str, uses: str = "fx.send") -> list[dict[str, object]]:
    return [
        {"id": "a", "uses": "fx.get", "with": {}},
        {"id": "b", "uses": uses, "with": {"headers": {"auth": template}}},
    ]


@pytest.mark.parametrize("template", LAUNDERING)
def test_every_transformation_of_a_secret_is_refused_at_save_naming_the_field(template: str) -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_pipeline_templates(pipeline(template), allowed_roots=ALLOWED_ROOTS)
    assert refused.value.field == "payload.pipeline[1].with.headers.auth"
    assert "can only be written out whole" in str(refused.value)


@pytest.mark.parametrize("template", LAUNDERING)
def test_every_transformation_of_a_secret_is_refused_at_render_without_its_value(template: str) -> None:
    with pytest.raises(TemplateError) as refused:
        render({"v": template}, context())
    assert SECRET not in str(refused.value)
    assert SECRET[::-1] not in str(refused.value)


@pytest.mark.parametrize("template", PLAIN)
def test_a_secret_written_out_whole_is_accepted_and_sent(template: str) -> None:
    check_pipeline_templates(pipeline(template), allowed_roots=ALLOWED_ROOTS)
    assert SECRET in render(template, context())


def test_a_built_in_step_cannot_receive_a_secret() -> None:
    with pytest.raises(InvalidArgument) as refused:
        check_pipeline_templates(pipeline("${secrets.TOKEN}", uses="pao.noop"), allowed_roots=ALLOWED_ROOTS)
    assert refused.value.field == "payload.pipeline[1].with.headers.auth"
    assert "built-in pao step cannot receive a secret" in str(refused.value)


def test_short_or_empty_secrets_are_refused_naming_them_never_their_values() -> None:
    with pytest.raises(ConfigurationError) as refused:
        check_secrets({"PAO_SECRET_ZONE": "zone", "PAO_SECRET_EMPTY": "", "PAO_SECRET_OK": "x" * MIN_SECRET_LENGTH})
    message = str(refused.value)
    assert message.startswith("PAO_SECRET_EMPTY, PAO_SECRET_ZONE: a secret must be at least 8 characters")
    assert "zone" not in message.replace("ZONE", "")
    check_secrets({"PAO_SECRET_OK": "x" * MIN_SECRET_LENGTH, "OTHER": "1"})
