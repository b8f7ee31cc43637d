"""Topic filters: validation (each refusal says what is wrong) and MQTT matching rules."""

import dataclasses

import pytest

from rules.topic import (
    MAX_TOPIC_LENGTH,
    TopicError,
    TopicFilter,
    check_topic_name,
    topic_name_problem,
)


def test_filter_with_captures_subscribes_with_plus_and_lists_capture_names() -> None:
    topic_filter = TopicFilter("sensors/{site}/+/{kind}/#")

    assert topic_filter.subscription == "sensors/+/+/+/#"
    assert topic_filter.capture_names == ("site", "kind")
    assert topic_filter.captures == (("site", 1), ("kind", 3))
    assert topic_filter.multi_level
    assert str(topic_filter) == "sensors/{site}/+/{kind}/#"


def test_filter_without_wildcards_subscribes_as_written() -> None:
    topic_filter = TopicFilter("a/b/c")

    assert topic_filter.subscription == "a/b/c"
    assert topic_filter.capture_names == ()
    assert not topic_filter.multi_level


@pytest.mark.parametrize("value", ["#", "+", "/", "a//b", "/a/+", "a/", "$SYS/#", "{x}", "a b/c"])
def test_valid_mqtt_filters_are_accepted(value: str) -> None:
    assert TopicFilter(value).value == value


@pytest.mark.parametrize(
    ("value", "fragment"),
    [
        ("", "empty"),
        ("a/#/b", "'#' must be the last level"),
        ("#/a", "'#' must be the last level"),
        ("a#", "'#' must be a whole level"),
        ("a/b#", "'#' must be a whole level"),
        ("a/+b", "'+' must be a whole level"),
        ("a/b+/c", "'+' must be a whole level"),
        ("a/{x}/{x}", "capture name 'x' is used twice"),
        ("a/{1x}", "braces may only form a whole-level capture"),
        ("a/{}", "braces may only form a whole-level capture"),
        ("a/{x-y}", "braces may only form a whole-level capture"),
        ("a/x{y}", "braces may only form a whole-level capture"),
        ("a/b}", "braces may only form a whole-level capture"),
        ("a/{topic}", "reserved"),
        ("a\x00b", "NUL"),
        ("a/\ud800", "not valid UTF-8"),
        ("$share/group/a/b", "shared subscriptions"),
        ("$share", "shared subscriptions"),
        ("$queue/a/b", "shared subscriptions"),
    ],
)
def test_invalid_filters_are_refused_with_a_reason(value: str, fragment: str) -> None:
    with pytest.raises(TopicError) as caught:
        TopicFilter(value)

    assert fragment in str(caught.value)


def test_filter_length_is_counted_in_utf8_bytes() -> None:
    TopicFilter("a" * MAX_TOPIC_LENGTH)
    with pytest.raises(TopicError, match="more than the MQTT limit"):
        TopicFilter("a" * (MAX_TOPIC_LENGTH + 1))
    with pytest.raises(TopicError, match="more than the MQTT limit"):
        TopicFilter("é" * (MAX_TOPIC_LENGTH // 2 + 1))  # 2 bytes each


def test_filter_is_immutable_and_equal_by_text() -> None:
    first = TopicFilter("a/{x}/#")

    assert first == TopicFilter("a/{x}/#")
    assert hash(first) == hash(TopicFilter("a/{x}/#"))
    assert first != TopicFilter("a/{y}/#")
    with pytest.raises(dataclasses.FrozenInstanceError):
        first.value = "b"  # type: ignore[misc]


def test_filter_refuses_a_non_string() -> None:
    with pytest.raises(TypeError):
        TopicFilter(b"a/b")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("value", "topic", "captures"),
    [
        ("a/b", "a/b", {}),
        ("a/b", "a/c", None),
        ("a/b", "a/b/c", None),
        ("a/+", "a/b", {}),
        ("a/+", "a/", {}),  # '+' matches an empty level
        ("a/+", "a", None),
        ("a/+", "a/b/c", None),
        ("+/+", "/x", {}),
        ("a/#", "a", {}),  # '#' matches the parent level
        ("a/#", "a/", {}),
        ("a/#", "a/b/c", {}),
        ("a/#", "ab", None),
        ("a/#", "b/a", None),
        ("#", "a/b", {}),
        ("#", "/", {}),
        ("s/{site}/+/temp", "s/lab/3/temp", {"site": "lab"}),
        ("s/{site}/+/temp", "s/lab/3/hum", None),
        ("{a}/{b}/#", "x/y/z/w", {"a": "x", "b": "y"}),
        ("{a}/{b}/#", "x/y", {"a": "x", "b": "y"}),
        ("{a}/{b}/#", "x", None),
        ("s/{site}", "s/", {"site": ""}),
    ],
)
def test_match_follows_mqtt_wildcard_rules(
    value: str, topic: str, captures: dict[str, str] | None
) -> None:
    assert TopicFilter(value).match(topic) == captures


@pytest.mark.parametrize(
    ("value", "topic", "matches"),
    [
        ("#", "$SYS/broker/load", False),
        ("+/broker/load", "$SYS/broker/load", False),
        ("{root}/broker/load", "$SYS/broker/load", False),
        ("+/#", "$SYS/x", False),
        ("$SYS/#", "$SYS/broker/load", True),
        ("$SYS/#", "$SYS", True),
        ("$SYS/+/load", "$SYS/broker/load", True),
        ("$SYS/{what}/load", "$SYS/broker/load", True),
        ("#", "a/$SYS", True),  # only a '$' at the start of the topic is special
        ("a/+", "a/$x", True),
    ],
)
def test_wildcards_at_the_first_level_do_not_match_dollar_topics(
    value: str, topic: str, matches: bool
) -> None:
    assert (TopicFilter(value).match(topic) is not None) is matches


def test_topic_names_with_wildcards_or_nul_are_refused() -> None:
    assert topic_name_problem("a/b") is None
    assert topic_name_problem("$SYS/x") is None
    assert check_topic_name("a/ b/") == "a/ b/"
    for bad, fragment in [
        ("", "empty"),
        ("a/+", "wildcard"),
        ("a/#", "wildcard"),
        ("a\x00", "NUL"),
        ("a" * (MAX_TOPIC_LENGTH + 1), "limit"),
    ]:
        problem = topic_name_problem(bad)
        assert problem is not None
        assert fragment in problem
        with pytest.raises(TopicError):
            check_topic_name(bad)
