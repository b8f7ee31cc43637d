"""MQTT topic filters with named captures, and topic-name checks.

A rule's `topic` is an MQTT filter extended by one thing: a level written `{name}` is a named
single-level wildcard. It is subscribed as `+`, and the level it matched is available to the
rule's templates as `${name}`. Everything else is plain MQTT 3.1.1/5.0:

- levels are separated by `/`; empty levels are allowed (`a//b`, `/a`);
- `+` matches exactly one level and must be the whole level;
- `#` matches the parent level and any number of levels below it (`a/#` matches `a`, `a/b`,
  `a/b/c`), and must be the whole last level;
- a filter whose first level is a wildcard does not match topics starting with `$`
  (`#` does not match `$SYS/broker/load`); `$SYS/#` does.

Shared subscriptions (`$share/<group>/...`, EMQX's `$queue/...`) are refused in a filter:
which group the bridge joins is a bridge setting, not a property of one rule.
"""

import re
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "MAX_TOPIC_LENGTH",
    "TopicError",
    "TopicFilter",
    "check_topic_name",
    "topic_name_problem",
]

MAX_TOPIC_LENGTH: Final = 65535
"""The longest topic or filter MQTT can carry, in bytes of UTF-8."""

_CAPTURE: Final = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_RESERVED_NAMES: Final = frozenset({"topic"})
_SHARED_LEVELS: Final = frozenset({"$share", "$queue"})


class TopicError(ValueError):
    """A topic filter or topic name that MQTT (or this bridge) does not accept."""


def _encoding_problem(value: str, what: str) -> str | None:
    """Why `value` cannot be an MQTT UTF-8 string, or None."""
    if not value:
        return f"{what} is empty"
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        return f"{what} is not valid UTF-8 (it contains a lone surrogate)"
    if size > MAX_TOPIC_LENGTH:
        return f"{what} is {size} bytes of UTF-8, more than the MQTT limit of {MAX_TOPIC_LENGTH}"
    if "\x00" in value:
        return f"{what} contains a NUL character"
    return None


def topic_name_problem(topic: str) -> str | None:
    """Why `topic` cannot be the topic of a PUBLISH, or None when it can."""
    problem = _encoding_problem(topic, "topic")
    if problem is not None:
        return problem
    if "+" in topic or "#" in topic:
        return f"topic {topic!r} contains a wildcard ('+' or '#'); only filters may"
    return None


def check_topic_name(topic: str) -> str:
    """Return `topic` when it is a valid PUBLISH topic; raise TopicError otherwise."""
    problem = topic_name_problem(topic)
    if problem is not None:
        raise TopicError(problem)
    return topic


@dataclass(frozen=True, slots=True)
class TopicFilter:
    """A validated MQTT topic filter whose `{name}` levels capture the level they match.

    `TopicFilter("sensors/{site}/+/temp")` raises TopicError with a message saying what is
    wrong; once built, a filter is immutable and equal to any filter with the same text.
    """

    value: str
    levels: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The filter's levels as written, `{name}` included; a trailing `#` is kept."""
    subscription: str = field(init=False, repr=False, compare=False)
    """The filter to SUBSCRIBE with: every `{name}` replaced by `+`."""
    capture_names: tuple[str, ...] = field(init=False, repr=False, compare=False)
    """The capture names in level order."""
    captures: tuple[tuple[str, int], ...] = field(init=False, repr=False, compare=False)
    """(name, level index) for every capture, in level order."""
    multi_level: bool = field(init=False, repr=False, compare=False)
    """Whether the filter ends with `#`."""
    pattern: tuple[str | None, ...] = field(init=False, repr=False, compare=False)
    """The levels before any `#`: the literal text, or None for a single-level wildcard."""

    def __post_init__(self) -> None:
        value = self.value
        if not isinstance(value, str):
            raise TypeError(f"a topic filter is a str, not {type(value).__name__}")
        problem = _encoding_problem(value, "topic filter")
        if problem is not None:
            raise TopicError(problem)
        levels = tuple(value.split("/"))
        if levels[0] in _SHARED_LEVELS:
            prefix = levels[0]
            raise TopicError(
                f"shared subscriptions ({prefix}/<group>/...) are a bridge setting, not part of"
                f" a rule: write the filter without the {prefix}/<group>/ prefix"
            )
        sub_levels: list[str] = []
        captures: list[tuple[str, int]] = []
        last = len(levels) - 1
        for index, level in enumerate(levels):
            sub_levels.append(self._check_level(level, index, last, captures))
        object.__setattr__(self, "levels", levels)
        object.__setattr__(self, "subscription", "/".join(sub_levels))
        object.__setattr__(self, "captures", tuple(captures))
        object.__setattr__(self, "capture_names", tuple(name for name, _ in captures))
        multi_level = levels[-1] == "#"
        object.__setattr__(self, "multi_level", multi_level)
        fixed = levels[:-1] if multi_level else levels
        pattern = tuple(None if sub == "+" else sub for sub in sub_levels[: len(fixed)])
        object.__setattr__(self, "pattern", pattern)

    @staticmethod
    def _check_level(level: str, index: int, last: int, captures: list[tuple[str, int]]) -> str:
        """Validate one level; record a capture; return the level as subscribed."""
        where = f"level {index + 1} ({level!r})"
        if level == "#":
            if index != last:
                raise TopicError(f"'#' must be the last level of a filter, but {where} is not")
            return level
        if level == "+":
            return level
        capture = _CAPTURE.fullmatch(level)
        if capture is not None:
            name = capture.group(1)
            if name in _RESERVED_NAMES:
                raise TopicError(
                    f"capture name {name!r} in {where} is reserved: ${{{name}}} is the whole topic"
                )
            if any(name == seen for seen, _ in captures):
                raise TopicError(f"capture name {name!r} is used twice")
            captures.append((name, index))
            return "+"
        if "#" in level:
            raise TopicError(f"'#' must be a whole level, but {where} has other text")
        if "+" in level:
            raise TopicError(f"'+' must be a whole level, but {where} has other text")
        if "{" in level or "}" in level:
            raise TopicError(
                f"{where}: braces may only form a whole-level capture '{{name}}', with a name"
                " of letters, digits and '_' that does not start with a digit"
            )
        return level

    def __str__(self) -> str:
        return self.value

    def match(self, topic: str) -> dict[str, str] | None:
        """The captures when `topic` matches this filter, else None.

        `topic` is assumed to be a valid topic name (no wildcards); the `$` rule applies.
        """
        topic_levels = topic.split("/")
        pattern = self.pattern
        if len(topic_levels) != len(pattern) and not (
            self.multi_level and len(topic_levels) >= len(pattern)
        ):
            return None
        if topic.startswith("$") and (not pattern or pattern[0] is None):
            return None
        for wanted, level in zip(pattern, topic_levels, strict=False):
            if wanted is not None and wanted != level:
                return None
        return {name: topic_levels[index] for name, index in self.captures}
