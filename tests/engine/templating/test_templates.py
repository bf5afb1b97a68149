"""engine.templates: rendering, strictness, secrets, redaction, sandbox and pre-save checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from pao_orchestrator.engine import Settings
from pao_orchestrator.engine.templating import (
    ALLOWED_ROOTS,
    Secrets,
    TemplateError,
    build_context,
    check_pipeline_templates,
    check_template,
    needs_isolation,
    redact,
    references,
    render,
    seal,
    unseal,
)
from pao_orchestrator.errors import InvalidArgument, StepError

FAKE_ENV = {"PAO_SECRET_TOKEN": "abc12345", "DATABASE_URL": "postgres://x"}

WEATHER = {"summary": "Sunny", "temp_c": 21, "rain": False, "wind": 3.5, "alert": None, "tags": ["a", "b"]}


def make_context(
    *,
    steps: dict[str, Any] | None = None,
    saved: dict[str, Any] | None = None,
    trigger: dict[str, Any] | None = None,
    secrets: Secrets | None = None,
) -> dict[str, Any]:
    return build_context(
        steps={"weather": WEATHER} if steps is None else steps,
        saved={} if saved is None else saved,
        trigger={"kind": "schedule", "scheduled_for": datetime(2025, 5, 1, 8, tzinfo=UTC)}
        if trigger is None
        else trigger,
        task={"id": "task-1", "title": "Morning weather"},
        run={"id": "run-1", "attempt": 2},
        secrets=Secrets(FAKE_ENV) if secrets is None else secrets,
        now=datetime(2025, 5, 1, 8, 0, 3, 123456, tzinfo=UTC),
    )


def render_error(value: Any, context: dict[str, Any] | None = None) -> str:
    with pytest.raises(TemplateError) as info:
        render(value, make_context() if context is None else context)
    assert isinstance(info.value, StepError)
    assert info.value.retryable is False
    return str(info.value)


# --------------------------------------------------------------------------- rendering


def test_exact_expression_keeps_its_type() -> None:
    ctx = make_context()
    assert render("${steps.weather.temp_c}", ctx) == 21
    assert render("${ steps.weather.wind }", ctx) == 3.5
    assert render("${steps.weather.rain}", ctx) is False
    assert render("${steps.weather.alert}", ctx) is None
    assert render("${steps.weather.tags}", ctx) == ["a", "b"]
    assert render("${steps.weather}", ctx) == WEATHER
    assert render("${ {'n': steps.weather.temp_c + 1} }", ctx) == {"n": 22}


def test_exact_expression_result_is_a_copy() -> None:
    ctx = make_context()
    out = render("${steps.weather.tags}", ctx)
    out.append("c")
    assert WEATHER["tags"] == ["a", "b"]


def test_mixed_text_renders_to_string() -> None:
    ctx = make_context()
    assert render("It is ${steps.weather.summary}, ${steps.weather.temp_c}°C", ctx) == "It is Sunny, 21°C"
    assert render(" ${steps.weather.temp_c}", ctx) == " 21"
    assert render("${steps.weather.temp_c}\n", ctx) == "21\n"  # trailing newline kept


def test_objects_in_text_are_json_not_python_repr() -> None:
    ctx = make_context(steps={"s": {"d": {"a": 1, "ok": True, "none": None}, "l": [1, "x"]}})
    assert render("d=${steps.s.d}", ctx) == 'd={"a": 1, "ok": true, "none": null}'
    assert render("l=${steps.s.l}", ctx) == 'l=[1, "x"]'
    assert render("${steps.s.d.ok} ${steps.s.d.none}", ctx) == "true null"
    assert render("${steps.s.d | tojson}", ctx) == '{"a": 1, "ok": true, "none": null}'


def test_nested_structures_and_non_strings() -> None:
    ctx = make_context()
    value = {
        "chat_id": 12345,
        "flag": True,
        "text": "${steps.weather.summary}",
        "parts": ["${steps.weather.temp_c}", {"deep": "t=${steps.weather.temp_c}"}, None],
        "${not.a.template.key}": "plain",
    }
    assert render(value, ctx) == {
        "chat_id": 12345,
        "flag": True,
        "text": "Sunny",
        "parts": [21, {"deep": "t=21"}, None],
        "${not.a.template.key}": "plain",
    }


def test_plain_strings_untouched() -> None:
    ctx = make_context()
    for text in ['{"json": {{1}}}', "100% {% raw %}", "cost: $5 {x}", "#{x}", ""]:
        assert render(text, ctx) == text


def test_dollar_dollar_escapes_a_literal() -> None:
    ctx = make_context()
    assert render("echo $${HOME} at ${now}", ctx) == "echo ${HOME} at 2025-05-01T08:00:03+00:00"
    assert render("$${steps.weather.summary}", ctx) == "${steps.weather.summary}"
    check_template("$${HOME}", "f", ALLOWED_ROOTS, ())  # not a reference to HOME


def test_builtin_names() -> None:
    ctx = make_context(trigger={"kind": "event", "event": {"topic": "mail", "data": {"from": "a@b"}}})
    assert render("${trigger.kind}", ctx) == "event"
    assert render("${event.data['from']}", ctx) == "a@b"
    assert render("${task.title} #${run.attempt}", ctx) == "Morning weather #2"
    assert render("${now}", ctx) == "2025-05-01T08:00:03+00:00"
    assert make_context()["trigger"]["scheduled_for"] == "2025-05-01T08:00:00+00:00"


def test_statements_and_filters() -> None:
    ctx = make_context(steps={"s": {"items": [{"n": "a"}, {"n": "b"}], "raw": '{"k": [1]}', "num": "42"}})
    assert render("${% for i in steps.s['items'] %}${i.n};${% endfor %}", ctx) == "a;b;"
    assert render("${# note #}${steps.s.num | int}", ctx) == 42
    assert render("${steps.s.num | float}", ctx) == 42.0
    assert render("${'x' | int(7)}", ctx) == 7
    assert render("${2.567 | round(1)}", ctx) == 2.6
    assert render("${steps.s.raw | fromjson}", ctx) == {"k": [1]}
    assert render("${steps.s.missing | default('n/a')}", ctx) == "n/a"
    assert render("${steps.s.missing is defined}", ctx) is False
    assert render("${steps.s['items'] | map(attribute='n')}", ctx) == ["a", "b"]
    assert "int: cannot convert 'x'" in render_error("${'x' | int}", ctx)
    assert "fromjson: not valid JSON" in render_error("${'{' | fromjson}", ctx)


def test_field_named_items_wins_over_dict_method() -> None:
    ctx = make_context(steps={"list": {"items": [1, 2], "keys": "k", "get": 0}})
    assert render("${steps.list.items}", ctx) == [1, 2]
    assert render("${steps.list.keys}-${steps.list.get}", ctx) == "k-0"
    assert "has no field 'values'" in render_error("${steps.list.values}", ctx)


def test_save_as_names_at_top_level() -> None:
    ctx = make_context(saved={"forecast": WEATHER})
    assert render("${forecast.summary}", ctx) == "Sunny"
    with pytest.raises(TemplateError, match="clashes with the built-in name"):
        make_context(saved={"now": 1})


def test_tool_output_is_not_rendered_again() -> None:
    ctx = make_context(steps={"mail": {"body": "${secrets.TOKEN}"}})
    assert render("${steps.mail.body}", ctx) == "${secrets.TOKEN}"
    assert render("got: ${steps.mail.body}", ctx) == "got: ${secrets.TOKEN}"


# --------------------------------------------------------------------------- errors at run time


def test_missing_step_names_earlier_steps() -> None:
    message = render_error("${steps.wether.summary}")
    assert message == "'${steps.wether.summary}': no step 'wether' before this one; earlier steps: weather"


def test_missing_field_names_available_fields() -> None:
    message = render_error("${steps.weather.summry}")
    assert message == (
        "'${steps.weather.summry}': step 'weather' output has no field 'summry'; "
        "fields: summary, temp_c, rain, wind, alert, tags"
    )
    assert render_error("Forecast: ${steps.weather.summry}!").startswith("'Forecast: ${steps.weather.summry}!': step")


def test_missing_deeper_and_typed_errors() -> None:
    ctx = make_context(steps={"s": {"a": {"b": 1}, "l": [1, 2], "n": 5}})
    assert "'steps.s.a' has no field 'c'; fields: b" in render_error("${steps.s.a.c}", ctx)
    assert "'steps.s.l' is a list of 2 items; there is no item 5" in render_error("${steps.s.l[5]}", ctx)
    assert "'steps.s.n' is a number, not an object; it has no field 'x'" in render_error("${steps.s.n.x}", ctx)
    assert "not started by an event" in render_error("${event.topic}", ctx)
    assert "ZeroDivisionError" in render_error("${1 / 0}", ctx)


def test_the_failing_lookup_is_reported_not_a_defaulted_one() -> None:
    message = render_error("${steps.weather.nope | default('x')} ${steps.weather.bad}")
    assert "no field 'bad'" in message
    assert "no field 'nope'" not in message


def test_unknown_name_lists_available_names() -> None:
    message = render_error("${wether.summary}", make_context(saved={"weather": WEATHER}))
    assert (
        "unknown name 'wether'; available: condition, event, now, run, secrets, steps, task, trigger, weather"
        in message
    )


def test_render_prefixes_field_path() -> None:
    with pytest.raises(TemplateError, match=r"^with\.parts\[1\]: '\$\{steps\.nope\}': no step 'nope'"):
        render({"parts": ["ok", "${steps.nope}"]}, make_context(), field="with")


def test_syntax_error_at_run_time() -> None:
    assert "syntax error" in render_error("${ steps.weather.summary ")


# --------------------------------------------------------------------------- secrets


def test_secret_resolves_from_prefixed_variable_only() -> None:
    secrets = Secrets(FAKE_ENV)
    ctx = make_context(secrets=secrets)
    assert secrets.used_values() == set()
    assert render("Bearer ${secrets.TOKEN}", ctx) == "Bearer abc12345"
    assert render("${secrets['TOKEN']}", ctx) == "abc12345"
    assert secrets.used_values() == {"abc12345"}
    assert secrets.used() == {"TOKEN": "abc12345"}
    assert "abc12345" not in repr(secrets)


def test_nothing_else_in_the_environment_is_reachable() -> None:
    ctx = make_context()
    message = render_error("${secrets.DATABASE_URL}", ctx)
    assert message == (
        "'${secrets.DATABASE_URL}': secret 'DATABASE_URL' is not set: export PAO_SECRET_DATABASE_URL "
        "in the orchestrator's environment; secrets that are set: TOKEN"
    )
    attempts = [
        "${env.DATABASE_URL}",
        "${environ.DATABASE_URL}",
        "${secrets.PAO_SECRET_DATABASE_URL}",
        "${secrets._values}",
        "${secrets|attr('_values')}",
        "${secrets.__dict__}",
        "${secrets}",
        "x ${secrets}",
        "${secrets | list}",
        "${secrets | tojson}",
        "${secrets | string}",
        "${secrets | pprint}",
        "${secrets.get('DATABASE_URL')}",
        "${self._TemplateReference__context}",
        "${lipsum.__globals__}",
        "${cycler.__init__.__globals__.os.environ}",
        "${namespace}",
        "${range.__self__}",
        "${now.__class__.__mro__[1].__subclasses__()}",
    ]
    for template in attempts:
        try:
            result = render(template, ctx)
        except TemplateError:
            continue
        assert "postgres" not in str(result), template


def test_a_secret_cannot_default_or_be_filtered_at_render_time() -> None:
    message = render_error("${secrets.NOPE | default('none')}", make_context())
    assert "can only be written out whole" in message
    assert "no PAO_SECRET_* variables are set" in render_error("${secrets.X}", make_context(secrets=Secrets({})))


def test_secrets_come_from_the_settings_environment_and_nothing_else(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PAO_SECRET_FROM_OS", "os-value-long")
    monkeypatch.setenv("DATABASE_URL", "postgres://not-a-secret")
    environ = Settings().secret_environ()
    assert environ["PAO_SECRET_FROM_OS"] == "os-value-long" and "DATABASE_URL" not in environ
    assert Secrets(environ).get("FROM_OS") == "os-value-long"


def test_error_messages_do_not_leak_used_secrets() -> None:
    message = render_error("${secrets.TOKEN | int}")
    assert "abc12345" not in message
    assert "can only be written out whole" in message


def test_redact_masks_values_never_keys() -> None:
    secrets = Secrets({"PAO_SECRET_TOKEN": "abc12345", "PAO_SECRET_UNUSED": "zzzz9999"})
    ctx = make_context(secrets=secrets)
    args = render({"auth": "Bearer ${secrets.TOKEN}", "n": ["${secrets.TOKEN}", 7]}, ctx)
    stored = {"input": args, "echo": {"timezone": ("abc12345abc12345", None)}, "other": "zzzz9999"}
    redacted = redact(stored, secrets.used_values())
    assert redacted == {
        "input": {"auth": "Bearer ***", "n": ["***", 7]},
        "echo": {"timezone": ("******", None)},
        "other": "zzzz9999",  # never read, so not known to be sensitive
    }
    assert args["auth"] == "Bearer abc12345"  # the original is untouched
    assert secrets.redact("abc12345!") == "***!"
    assert redact(None, {"abc12345"}) is None
    assert redact("abcdefgh", {"abcdefgh", "abcdefghij"}) == "***"
    # A secret that happens to be a common word never rewrites a key.
    assert redact({"timezone": "zone"}, {"zone"}) == {"timezone": "***"}


# --------------------------------------------------------------------------- sandbox


def test_sandbox_blocks_attribute_escapes() -> None:
    ctx = make_context()
    escapes = [
        "${''.__class__}",
        "${''.__class__.__mro__[1].__subclasses__()}",
        "${steps.__class__.__mro__}",
        "${steps.weather.summary.__class__}",
        "${steps.weather.summary | attr('__class__')}",
        "${'{0.__class__}'.format(1)}",
        "${steps.weather.tags.append(1)}",
        "${steps.weather.summary.upper.__globals__}",
        "${'a' * 100000000}",
        "${9 ** 99999999}",
    ]
    for template in escapes:
        with pytest.raises(TemplateError):
            render(template, ctx)
    assert "not allowed in a template" in render_error("${''.__class__}", ctx)
    assert WEATHER["tags"] == ["a", "b"]


def test_results_must_be_json_values() -> None:
    assert "not a JSON value" in render_error("${steps.weather.summary.upper}")
    assert render("${steps.weather.summary.upper()}", make_context()) == "SUNNY"


# --------------------------------------------------------------------------- static checks


def pipeline(*steps: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"id": f"s{i}", "uses": "srv.tool", **step} for i, step in enumerate(steps)]


def check_error(steps: list[dict[str, Any]]) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        check_pipeline_templates(steps, allowed_roots=ALLOWED_ROOTS)
    return info.value


def test_valid_pipeline_passes() -> None:
    check_pipeline_templates(
        [
            {"id": "weather", "uses": "w.forecast", "with": {"city": "Chisinau"}, "save_as": "weather"},
            {
                "id": "notify",
                "uses": "t.send",
                "with": {
                    "chat_id": 12345,
                    "text": "${steps.weather.summary} / ${weather.temp_c} at ${now} ${secrets.TOKEN}",
                    "meta": ["${trigger.kind}", {"e": "${event.data | default(none)}", "r": "${run.id}"}],
                    "loop": "${% for t in steps.weather.tags %}${t}${loop.index}${% endfor %}",
                },
            },
        ],
        allowed_roots=ALLOWED_ROOTS,
    )


def test_syntax_error_names_field_and_template() -> None:
    err = check_error(pipeline({}, {"with": {"body": {"text": "Hi ${steps.s0.summary"}}}))
    assert err.field == "payload.pipeline[1].with.body.text"
    assert "'Hi ${steps.s0.summary': syntax error: unexpected end of template" in err.message
    err = check_error(pipeline({"with": {"x": ["${ now | nosuch }"]}}))
    assert err.field == "payload.pipeline[0].with.x[0]"
    assert "No filter named 'nosuch'" in err.message and "fromjson" in err.message


def test_unknown_step_rejected() -> None:
    err = check_error(
        [
            {"id": "weather", "uses": "w.f", "with": {}},
            {"id": "notify", "uses": "t.s", "with": {"text": "${steps.wether.summary}"}},
        ]
    )
    assert str(err) == (
        "payload.pipeline[1].with.text: '${steps.wether.summary}': no step 'wether' before this one; "
        "earlier steps: weather"
    )


def test_forward_reference_rejected() -> None:
    err = check_error(pipeline({"with": {"a": "${steps.s1.x}"}}, {"save_as": "later"}))
    assert err.field == "payload.pipeline[0].with.a"
    assert "step 's1' runs after this one (pipeline[1])" in err.message
    assert "earlier steps: (none: this is the first step)" in err.message
    err = check_error(pipeline({"with": {"a": "${later.x}"}}, {"save_as": "later"}))
    assert "unknown name 'later'; 'later' is saved by a later step (pipeline[1])" in err.message


def test_self_reference_rejected() -> None:
    err = check_error(pipeline({}, {"with": {"a": "${steps.s1.x}"}, "save_as": "mine"}))
    assert "step 's1' is this step; a step cannot read its own output; earlier steps: s0" in err.message
    err = check_error(pipeline({}, {"with": {"a": "${mine.x}"}, "save_as": "mine"}))
    assert "'mine' is this step's own save_as" in err.message


def test_unknown_root_rejected() -> None:
    err = check_error(pipeline({"with": {"a": "${env.DATABASE_URL}"}}))
    assert err.message == (
        "'${env.DATABASE_URL}': unknown name 'env'; "
        "available: condition, event, now, run, secrets, steps, task, trigger"
    )
    for template in ["${self}", "${range(3)}", "${lipsum()}", "${secrets}", "${% include 'x' %}"]:
        check_error(pipeline({"with": {"a": template}}))


def test_save_as_usable_by_later_steps() -> None:
    steps = pipeline({"save_as": "forecast"}, {"with": {"a": "${forecast.summary}"}})
    check_pipeline_templates(steps, allowed_roots=ALLOWED_ROOTS)
    err = check_error(pipeline({"save_as": "steps"}))
    assert err.field == "payload.pipeline[0].save_as"


def test_check_template_for_task_level_keys() -> None:
    roots = {"trigger", "event", "task", "now"}
    check_template("${task.id}:${event.data.chat}", "dedupe_key", roots, ())
    with pytest.raises(InvalidArgument) as info:
        check_template("${steps.a.x}", "dedupe_key", roots, ())
    assert str(info.value).startswith("dedupe_key: '${steps.a.x}': unknown name 'steps'")
    check_template("${steps.a.x}", "f", {"steps"}, ["a"])


def test_references() -> None:
    value = {
        "a": "${steps.weather.summary} ${steps['my-step'][0].x} ${now}",
        "b": ["${% for i in steps.w.tags %}${i.name}${% endfor %}", 5, "plain"],
        "c": "${steps[trigger.kind].x}",
    }
    assert references(value) == {
        ("steps", "weather", "summary"),
        ("steps", "my-step", 0, "x"),
        ("now",),
        ("steps", "w", "tags"),
        ("steps",),
        ("trigger", "kind"),
    }
    with pytest.raises(TemplateError, match="syntax error"):
        references("${ oops")


# --------------------------------------------------------------------------- bounds


def test_simple_templates_are_told_apart_from_the_ones_that_need_isolation() -> None:
    simple = [
        "${steps.weather.summary}",
        "it is ${weather.summary | lower} at ${ steps.weather.temp_c | round }",
        "${% if weather.rain %}umbrella${% else %}none${% endif %}",
        "${ weather.tags[0] | default('x') | upper }",
        "${ weather.temp_c > 20 and weather.wind < 5 }",
    ]
    isolated = [
        "${% for t in weather.tags %}${t}${% endfor %}",
        "${% set x = weather.summary %}${x}",
        "${ weather.summary.ljust(10) }",
        "${ weather.summary * 3 }",
        "${ weather.summary ~ weather.summary }",
        "${ weather.tags | join(',') }",
        "${ '%s' % weather.summary }",
        "${ [weather.summary, weather.summary] }",
        "${ oops(",
    ]
    assert [needs_isolation({"v": s}) for s in simple] == [False] * len(simple)
    assert [needs_isolation({"v": s}) for s in isolated] == [True] * len(isolated)
    assert needs_isolation({"plain": "no template", "n": 3}) is False


def test_a_render_is_bounded_in_what_it_produces() -> None:
    big = {"text": "x" * 5000}
    with pytest.raises(TemplateError, match="larger than 1,000 characters of JSON"):
        render("${steps.big}", make_context(steps={"big": big}), limit=1000)
    with pytest.raises(TemplateError, match="longer than 1,000 characters"):
        render("a ${steps.big.text} b", make_context(steps={"big": big}), limit=1000)
    assert render("${steps.big.text | length}", make_context(steps={"big": big}), limit=1000) == 5000


def test_checking_a_template_never_evaluates_it() -> None:
    # Jinja's code generator folds constants: checking this used to build a 10 GB string.
    check_template("${ 'a' | center(10**10) }", "x", ALLOWED_ROOTS)
    with pytest.raises(InvalidArgument, match="No filter named 'nosuch'"):
        check_template("${ 'a' | nosuch }", "x", ALLOWED_ROOTS)
    with pytest.raises(InvalidArgument, match="at most 16,384"):
        check_template("${now}" + "x" * 17_000, "x", ALLOWED_ROOTS)
    with pytest.raises(InvalidArgument, match="nests too deeply"):
        check_template("${" + "(" * 2000 + "1" + ")" * 2000 + "}", "x", ALLOWED_ROOTS)


def test_sealing_keeps_secret_names_not_values_and_unsealing_reads_them_again() -> None:
    secrets = Secrets(FAKE_ENV)
    secrets.get("TOKEN")
    output = {"auth": "Bearer abc12345", "abc12345": ["x abc12345"], "n": 1}
    sealed = seal(output, secrets.used())
    assert sealed is not None and "abc12345" not in str(sealed) and "TOKEN" in str(sealed)
    fresh = Secrets(FAKE_ENV)
    assert unseal(sealed, fresh) == output and fresh.used() == {"TOKEN": "abc12345"}
    assert seal({"no": "secret here"}, secrets.used()) is None
    with pytest.raises(TemplateError, match="secret 'TOKEN' is not set"):
        unseal(sealed, Secrets({}))
