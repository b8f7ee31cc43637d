"""`${name}` templates for a rule's stream name and partition key.

A template is literal text with placeholders: `${name}` is the level a filter's `{name}`
captured, `${topic}` the whole MQTT topic. Nothing is evaluated: no expressions, no filters, no
defaults - rules are data, never code. `{` and `}` outside a placeholder are refused, because
`temps_{site}` is almost always a mistake for `temps_${site}`.

A stream template must render an HStreamDB name (a letter, then letters, digits, `_`, `-`; at
most 255 characters). So its literal text may only use those characters and must start with a
letter (or a placeholder), and when it renders, every character of a captured value or of the
topic that a name may not contain (`/`, `+`, `.`, `$`, spaces, non-ASCII, ...) becomes `_`:
topic `sensors/lab 1/t` with stream `${topic}` renders `sensors_lab_1_t`. The mapping applies to
stream names only; keys keep the values as they came. A name that is still invalid after the
mapping (empty, too long, or starting with a digit or `_` because a value did) is a RenderError,
which the bridge turns into a dead letter.
"""

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Final

from bridge.hstream.names import MAX_NAME_LENGTH, is_valid_name, name_problem

__all__ = [
    "TOPIC_NAME",
    "RenderError",
    "StreamTemplate",
    "Template",
    "TemplateError",
    "stream_safe",
]

TOPIC_NAME: Final = "topic"
"""The placeholder that stands for the whole MQTT topic."""

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_STREAM_LITERAL: Final = re.compile(r"[A-Za-z0-9_-]*")
_STREAM_UNSAFE: Final = re.compile(r"[^A-Za-z0-9_-]")


class TemplateError(ValueError):
    """A template that cannot be parsed or that does not fit where it is used."""


class RenderError(ValueError):
    """A stream template rendered a name HStreamDB would refuse (for this one message)."""


def stream_safe(value: str) -> str:
    """`value` with every character a stream name may not contain replaced by `_`."""
    if _STREAM_LITERAL.fullmatch(value) is not None:
        return value
    return _STREAM_UNSAFE.sub("_", value)


@dataclass(frozen=True, slots=True)
class Template:
    """A parsed `${name}` template; raises TemplateError when `source` is malformed."""

    source: str
    names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The placeholder names in order of first use, each once."""
    literals: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The literal text around the placeholders: always one more than the placeholders."""
    placeholders: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The placeholder names in order, repeats kept."""
    _format: str = field(init=False, repr=False, compare=False)
    # Fast path for the common one-placeholder template: prefix + value + suffix.
    _single: str | None = field(init=False, repr=False, compare=False)
    _prefix: str = field(init=False, repr=False, compare=False)
    _suffix: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.source, str):
            raise TypeError(f"a template is a str, not {type(self.source).__name__}")
        literals, placeholders = _parse(self.source)
        object.__setattr__(self, "literals", literals)
        object.__setattr__(self, "placeholders", placeholders)
        object.__setattr__(self, "names", tuple(dict.fromkeys(placeholders)))
        # Literal text holds no braces (refused above), so this is a safe str.format template
        # whose fields are plain identifiers: format_map only looks them up, it evaluates nothing.
        parts = [literals[0]]
        for name, literal in zip(placeholders, literals[1:], strict=True):
            parts.append(f"{{{name}}}{literal}")
        object.__setattr__(self, "_format", "".join(parts))
        single = placeholders[0] if len(placeholders) == 1 else None
        object.__setattr__(self, "_single", single)
        object.__setattr__(self, "_prefix", literals[0])
        object.__setattr__(self, "_suffix", literals[-1])

    def __str__(self) -> str:
        return self.source

    @property
    def is_constant(self) -> bool:
        """Whether the template has no placeholders (it always renders `source`)."""
        return not self.placeholders

    def check_names(self, available: Collection[str]) -> None:
        """Raise TemplateError unless every placeholder is in `available` or is `${topic}`."""
        for name in self.names:
            if name != TOPIC_NAME and name not in available:
                if available:
                    known = ", ".join(f"${{{n}}}" for n in available)
                    offer = f"the topic filter captures {known}; ${{{TOPIC_NAME}}} is the topic"
                else:
                    offer = f"the topic filter has no captures; ${{{TOPIC_NAME}}} is the topic"
                raise TemplateError(f"unknown placeholder ${{{name}}}: {offer}")

    def render(self, captures: Mapping[str, str], topic: str) -> str:
        """The text with every placeholder replaced by its capture or the topic, unchanged.

        RenderError when `captures` lacks a name the template uses (a Rule never lets that
        happen: it checks the names against its filter).
        """
        single = self._single
        if single is not None:
            value = topic if single == TOPIC_NAME else _value(captures, single)
            return self._prefix + value + self._suffix
        if not self.placeholders:
            return self.source
        values: dict[str, str] = {}
        for name in self.names:
            values[name] = topic if name == TOPIC_NAME else _value(captures, name)
        return self._format.format_map(values)


@dataclass(frozen=True, slots=True)
class StreamTemplate(Template):
    """A template that renders HStreamDB stream names (see the module docstring)."""

    def __post_init__(self) -> None:
        Template.__post_init__(self)
        if not self.source:
            raise TemplateError("stream template is empty")
        for literal in self.literals:
            if _STREAM_LITERAL.fullmatch(literal) is None:
                bad = _STREAM_UNSAFE.search(literal)
                char = bad.group() if bad is not None else literal
                raise TemplateError(
                    f"literal text in a stream template may only use letters, digits, '_' and"
                    f" '-' (HStreamDB stream names); {char!r} is not allowed"
                )
        first = self.literals[0]
        if first and not (first[0].isascii() and first[0].isalpha()):
            raise TemplateError(
                f"a stream name must start with a letter, but the template starts with {first[0]!r}"
            )
        fixed = sum(len(literal) for literal in self.literals)
        if fixed > MAX_NAME_LENGTH:
            raise TemplateError(
                f"the literal text alone is {fixed} characters; stream names have at most"
                f" {MAX_NAME_LENGTH}"
            )

    def render(self, captures: Mapping[str, str], topic: str) -> str:
        """The text with placeholders replaced by their values mapped by `stream_safe`."""
        single = self._single
        if single is not None:
            value = topic if single == TOPIC_NAME else _value(captures, single)
            return self._prefix + stream_safe(value) + self._suffix
        if not self.placeholders:
            return self.source
        values: dict[str, str] = {}
        for name in self.names:
            value = topic if name == TOPIC_NAME else _value(captures, name)
            values[name] = stream_safe(value)
        return self._format.format_map(values)

    def render_name(self, captures: Mapping[str, str], topic: str) -> str:
        """The rendered stream name; RenderError when HStreamDB would refuse it."""
        name = self.render(captures, topic)
        if is_valid_name(name):
            return name
        problem = name_problem(name) or "invalid name"
        if len(name) > 64:
            name = f"{name[:60]}..."
        raise RenderError(
            f"stream template {self.source!r} rendered {name!r} for topic {topic!r}: {problem}"
        )


def _value(captures: Mapping[str, str], name: str) -> str:
    try:
        return captures[name]
    except KeyError:
        raise RenderError(f"no value for placeholder ${{{name}}}") from None


def _parse(source: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split `source` into literal text and placeholder names (TemplateError when malformed)."""
    literals: list[str] = []
    placeholders: list[str] = []
    position = 0
    while True:
        start = source.find("${", position)
        literal = source[position:] if start < 0 else source[position:start]
        _check_literal(literal)
        literals.append(literal)
        if start < 0:
            return tuple(literals), tuple(placeholders)
        end = source.find("}", start + 2)
        if end < 0:
            raise TemplateError(f"placeholder at column {start + 1} is not closed with '}}'")
        name = source[start + 2 : end]
        if _NAME.fullmatch(name) is None:
            raise TemplateError(
                f"placeholder ${{{name}}} at column {start + 1}: a name is letters, digits and"
                " '_', not starting with a digit (no expressions: templates are not evaluated)"
            )
        placeholders.append(name)
        position = end + 1


def _check_literal(literal: str) -> None:
    if "{" in literal or "}" in literal:
        raise TemplateError(
            "'{' and '}' may only appear in a placeholder such as ${site}; a topic filter"
            " captures with {site}, a template uses it with ${site}"
        )
