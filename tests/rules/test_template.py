"""Templates: parsing, rendering, the stream-name character mapping and render errors."""

import pytest

from rules.template import (
    RenderError,
    StreamTemplate,
    Template,
    TemplateError,
    stream_safe,
)


def test_template_lists_placeholders_once_in_order_of_use() -> None:
    template = Template("${b}-${a}-${b}-${topic}")

    assert template.names == ("b", "a", "topic")
    assert template.placeholders == ("b", "a", "b", "topic")
    assert template.literals == ("", "-", "-", "-", "")


def test_template_renders_captures_and_topic_unchanged() -> None:
    template = Template("k:${site}/${topic}")

    assert template.render({"site": "lab 1.a"}, "s/lab 1.a/t") == "k:lab 1.a/s/lab 1.a/t"


@pytest.mark.parametrize(
    ("source", "captures", "expected"),
    [
        ("", {}, ""),
        ("constant", {}, "constant"),
        ("${x}", {"x": "v"}, "v"),
        ("pre_${x}_post", {"x": "v"}, "pre_v_post"),
        ("${x}${y}", {"x": "1", "y": "2"}, "12"),
        ("${x}-${x}", {"x": "v"}, "v-v"),
        ("$x $ ${x}", {"x": "v"}, "$x $ v"),  # a '$' not followed by '{' is literal
    ],
)
def test_template_render_cases(source: str, captures: dict[str, str], expected: str) -> None:
    assert Template(source).render(captures, "the/topic") == expected


def test_template_values_are_never_evaluated() -> None:
    # A value that looks like a template or a format field stays text; a placeholder that is a
    # Python dunder name is only a key to look up.
    template = Template("${__class__}:${x}")

    assert template.render({"__class__": "c", "x": "${x}{0}"}, "t") == "c:${x}{0}"


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("temps_{site}", "'{' and '}' may only appear in a placeholder"),
        ("a}", "'{' and '}' may only appear in a placeholder"),
        ("x_${site", "not closed"),
        ("${}", "a name is letters"),
        ("${1x}", "a name is letters"),
        ("${a.b}", "no expressions"),
        ("${a + b}", "no expressions"),
        ("${x:>10}", "no expressions"),
        ("${x[0]}", "no expressions"),
    ],
)
def test_malformed_templates_are_refused(source: str, fragment: str) -> None:
    with pytest.raises(TemplateError) as caught:
        Template(source)

    assert fragment in str(caught.value)


def test_check_names_allows_captures_and_topic_only() -> None:
    Template("${site}${topic}").check_names(("site", "kind"))

    with pytest.raises(TemplateError, match=r"unknown placeholder \$\{room\}.*\$\{site\}"):
        Template("${room}").check_names(("site",))
    with pytest.raises(TemplateError, match="has no captures"):
        Template("${room}").check_names(())


def test_render_without_a_value_for_a_placeholder_is_a_render_error() -> None:
    with pytest.raises(RenderError, match=r"\$\{site\}"):
        Template("x${site}").render({}, "t")
    with pytest.raises(RenderError, match=r"\$\{site\}"):
        Template("${a}${site}").render({"a": "1"}, "t")


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ("", "empty"),
        ("temps.${site}", "'.' is not allowed"),
        ("a/${topic}", "'/' is not allowed"),
        ("a b", "' ' is not allowed"),
        ("tëmps", "'ë' is not allowed"),
        ("1temps", "must start with a letter"),
        ("_temps", "must start with a letter"),
        ("-${x}", "must start with a letter"),
        ("a" * 256, "at most 255"),
        ("a" * 200 + "${x}" + "b" * 56, "at most 255"),
    ],
)
def test_stream_templates_that_cannot_render_a_valid_name_are_refused(
    source: str, fragment: str
) -> None:
    with pytest.raises(TemplateError) as caught:
        StreamTemplate(source)

    assert fragment in str(caught.value)


@pytest.mark.parametrize(
    "source", ["temps", "t-1_x", "${site}", "${topic}", "a" * 255, "x${a}${b}"]
)
def test_stream_templates_that_can_render_a_valid_name_are_accepted(source: str) -> None:
    assert StreamTemplate(source).source == source


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("abc-DEF_09", "abc-DEF_09"),
        ("a/b", "a_b"),
        ("a+b#c", "a_b_c"),
        ("lab 1.2", "lab_1_2"),
        ("$SYS", "_SYS"),
        ("été", "_t_"),  # one '_' per character, not per byte
        ("", ""),
    ],
)
def test_stream_safe_maps_every_refused_character_to_underscore(value: str, expected: str) -> None:
    assert stream_safe(value) == expected


def test_stream_names_map_captures_and_topic_but_keys_do_not() -> None:
    stream = StreamTemplate("t_${site}_${topic}")
    key = Template("${site}|${topic}")
    captures = {"site": "lab 1"}
    topic = "sensors/lab 1/temp"

    assert stream.render_name(captures, topic) == "t_lab_1_sensors_lab_1_temp"
    assert key.render(captures, topic) == "lab 1|sensors/lab 1/temp"


def test_stream_of_only_the_topic_renders_a_name_from_the_topic() -> None:
    assert StreamTemplate("${topic}").render_name({}, "sensors/lab 1/t") == "sensors_lab_1_t"


@pytest.mark.parametrize(
    ("source", "captures", "topic", "fragment"),
    [
        ("${site}", {"site": "1lab"}, "s/1lab", "must start with a letter"),
        ("${site}", {"site": "/lab"}, "s//lab", "must start with a letter"),
        ("${site}", {"site": ""}, "s/", "empty"),
        ("${topic}", {}, "$SYS/x", "must start with a letter"),
        ("${topic}", {}, "/a", "must start with a letter"),
        ("x${site}", {"site": "a" * 255}, "s/a", "longer than 255"),
    ],
)
def test_names_that_are_still_invalid_after_mapping_are_render_errors(
    source: str, captures: dict[str, str], topic: str, fragment: str
) -> None:
    with pytest.raises(RenderError) as caught:
        StreamTemplate(source).render_name(captures, topic)

    message = str(caught.value)
    assert fragment in message
    assert repr(source) in message  # says which template
    assert repr(topic) in message  # and for which topic


def test_render_error_message_shortens_very_long_names() -> None:
    with pytest.raises(RenderError) as caught:
        StreamTemplate("x${site}").render_name({"site": "a" * 1000}, "t")

    assert len(str(caught.value)) < 300


def test_templates_are_immutable_values() -> None:
    assert Template("a${b}") == Template("a${b}")
    assert StreamTemplate("a${b}") == StreamTemplate("a${b}")
    assert hash(Template("a${b}")) == hash(Template("a${b}"))
    assert str(Template("a${b}")) == "a${b}"
    assert Template("abc").is_constant
    assert not Template("a${b}").is_constant
