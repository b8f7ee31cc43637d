"""The Rule model: defaults, strict validation with the field in `loc`, and RuleError."""

import json
from typing import Any

import pytest
from pydantic import ValidationError

from rules.model import Rule, RuleError, parse_rule
from rules.template import StreamTemplate, Template
from rules.topic import TopicFilter

EXAMPLE: dict[str, Any] = {
    "id": "temps",
    "topic": "sensors/{site}/+/temp",
    "stream": "temps_${site}",
    "key": "${site}",
    "payload": "raw",
    "qos": 1,
    "enabled": True,
}


def rule_data(**changes: Any) -> dict[str, Any]:
    data = dict(EXAMPLE)
    data.update(changes)
    return data


def errors_of(data: dict[str, Any]) -> list[tuple[tuple[int | str, ...], str]]:
    with pytest.raises(ValidationError) as caught:
        Rule.model_validate(data)
    return [(error["loc"], error["msg"]) for error in caught.value.errors()]


def test_documented_example_rule_is_valid_and_round_trips_through_json() -> None:
    rule = Rule.model_validate_json(json.dumps(EXAMPLE))

    assert rule.model_dump(mode="json") == EXAMPLE
    assert Rule.model_validate(rule.model_dump(mode="json")) == rule


def test_defaults_are_empty_key_raw_qos1_enabled() -> None:
    rule = Rule.model_validate({"id": "a", "topic": "a/b", "stream": "s"})

    assert (rule.key, rule.payload, rule.qos, rule.enabled) == ("", "raw", 1, True)


def test_rule_exposes_parsed_filter_and_templates() -> None:
    rule = Rule.model_validate(EXAMPLE)

    assert rule.filter == TopicFilter("sensors/{site}/+/temp")
    assert rule.filter.subscription == "sensors/+/+/temp"
    assert rule.stream_template == StreamTemplate("temps_${site}")
    assert rule.key_template == Template("${site}")


def test_rule_is_frozen_and_hashable() -> None:
    rule = Rule.model_validate(EXAMPLE)

    with pytest.raises(ValidationError):
        rule.qos = 2
    assert hash(rule) == hash(Rule.model_validate(EXAMPLE))


def test_model_copy_validates_the_update_and_recompiles() -> None:
    rule = Rule.model_validate(EXAMPLE)

    changed = rule.model_copy(update={"topic": "x/{site}", "qos": 2})
    assert changed.filter.subscription == "x/+"
    assert changed.qos == 2
    with pytest.raises(ValidationError) as caught:
        rule.model_copy(update={"topic": "#/x"})
    assert caught.value.errors()[0]["loc"] == ("topic",)


@pytest.mark.parametrize(
    ("changes", "field", "fragment"),
    [
        ({"id": ""}, "id", "1-64 characters"),
        ({"id": "_x"}, "id", "starting with a letter or a digit"),
        ({"id": "a" * 65}, "id", "1-64 characters"),
        ({"id": "a b"}, "id", "1-64 characters"),
        ({"id": "a/b"}, "id", "1-64 characters"),
        ({"id": 7}, "id", "valid string"),
        ({"topic": ""}, "topic", "empty"),
        ({"topic": "a/#/b"}, "topic", "'#' must be the last level"),
        ({"topic": "a/b+"}, "topic", "'+' must be a whole level"),
        ({"topic": "a/{x}/{x}"}, "topic", "used twice"),
        ({"topic": "a/x{y}"}, "topic", "braces"),
        ({"topic": "$share/g/sensors/{site}/+/temp"}, "topic", "shared subscriptions"),
        ({"stream": ""}, "stream", "empty"),
        ({"stream": "temps.${site}"}, "stream", "'.' is not allowed"),
        ({"stream": "1temps"}, "stream", "start with a letter"),
        ({"stream": "temps_{site}"}, "stream", "${site}"),
        ({"stream": "temps_${room}"}, "stream", "unknown placeholder ${room}"),
        ({"stream": "temps_${site.upper()}"}, "stream", "no expressions"),
        ({"key": "${room}"}, "key", "unknown placeholder ${room}"),
        ({"key": "${site"}, "key", "not closed"),
        ({"payload": "text"}, "payload", "'raw' or 'json'"),
        ({"qos": 3}, "qos", "0, 1 or 2"),
        ({"qos": -1}, "qos", "0, 1 or 2"),
        ({"qos": True}, "qos", "0, 1 or 2"),
        ({"qos": 1.0}, "qos", "0, 1 or 2"),
        ({"qos": "1"}, "qos", "0, 1 or 2"),
        ({"enabled": "yes"}, "enabled", "valid boolean"),
        ({"enabled": 1}, "enabled", "valid boolean"),
        ({"streem": "x"}, "streem", "Extra inputs are not permitted"),
    ],
)
def test_invalid_field_is_refused_with_its_name_in_loc_and_a_reason(
    changes: dict[str, Any], field: str, fragment: str
) -> None:
    errors = errors_of(rule_data(**changes))

    assert errors[0][0] == (field,)
    assert fragment in errors[0][1]
    assert not errors[0][1].startswith("Value error")  # our messages, not pydantic's wrapper


@pytest.mark.parametrize("missing", ["id", "topic", "stream"])
def test_required_fields_are_named_when_missing(missing: str) -> None:
    data = rule_data()
    del data[missing]

    assert errors_of(data) == [((missing,), "Field required")]


def test_invalid_topic_does_not_also_blame_templates_that_use_its_captures() -> None:
    assert [loc for loc, _ in errors_of(rule_data(topic="sensors/{site}/#/x"))] == [("topic",)]


def test_every_invalid_field_is_reported() -> None:
    locs = [loc for loc, _ in errors_of(rule_data(id="", stream="1", qos=5))]

    assert locs == [("id",), ("stream",), ("qos",)]


def test_templates_may_use_topic_without_captures() -> None:
    rule = Rule.model_validate({"id": "all", "topic": "#", "stream": "${topic}", "key": "${topic}"})

    assert rule.stream_template.names == ("topic",)


def test_parse_rule_raises_rule_error_naming_the_field() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(rule_data(stream="temps_${room}"))

    assert caught.value.field == "stream"
    assert "unknown placeholder ${room}" in caught.value.message
    assert str(caught.value).startswith("stream: ")


def test_parse_rule_mentions_further_problems_in_the_message() -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(rule_data(id="", qos=9))

    assert caught.value.field == "id"
    assert "qos: qos must be 0, 1 or 2" in caught.value.message


@pytest.mark.parametrize("data", [["a"], "rule", None, 3])
def test_parse_rule_refuses_a_non_object(data: object) -> None:
    with pytest.raises(RuleError) as caught:
        parse_rule(data)

    assert caught.value.field == "rule"
    assert "JSON object" in caught.value.message


def test_parse_rule_returns_the_rule() -> None:
    assert parse_rule(EXAMPLE) == Rule.model_validate(EXAMPLE)


def test_rule_error_is_a_value_error_with_field_and_message() -> None:
    error = RuleError("topic", "bad")

    assert isinstance(error, ValueError)
    assert (error.field, error.message, str(error)) == ("topic", "bad", "topic: bad")


def test_json_schema_describes_the_fields_for_the_api_docs() -> None:
    schema = Rule.model_json_schema()

    assert schema["required"] == ["id", "topic", "stream"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["payload"]["enum"] == ["raw", "json"]
    assert schema["properties"]["qos"]["enum"] == [0, 1, 2]
