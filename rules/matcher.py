"""Routing: which enabled rules match a topic, and where each sends the message.

`Matcher` is built once per set of rules: build a new one when the rules change and swap it in
(its rules never change, so the old one can finish routing what it was given). It keeps a trie
over filter levels: each node has literal children by level text, one child for single-level
wildcards (`+` and `{name}` share it), and the rules whose filter ends in `#` there. A topic
walks the trie once, so the cost depends on the topic's depth and on how many filters overlap,
not on the number of rules.

`route(topic)` renders every match's stream name and key. It is a pure function of the topic,
so results are memoised in a bounded cache: IoT topics repeat (one per device and measurement),
and a cache hit costs a dict lookup. The cache holds at most `cache_size` topics of at most
512 characters, and at most `_ROUTE_CACHE_BYTES` of memory (topics, rendered names and keys,
with object overheads, estimated); it is emptied when either is reached.
"""

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from operator import attrgetter
from typing import Final

from rules.model import Rule
from rules.template import RenderError, StreamTemplate, Template

__all__ = ["Match", "Matcher", "Route"]

_ROUTE_CACHE_SIZE: Final = 65536
_CACHED_TOPIC_LENGTH: Final = 512  # longer topics are routed each time: they would bloat the cache
_ROUTE_CACHE_BYTES: Final = 8 * 1024 * 1024
_ENTRY_OVERHEAD: Final = 160  # the dict slot and the tuple (measured ~100-150 B)
_ROUTE_OVERHEAD: Final = 80  # a Route object (slots)


def _entry_bytes(topic: str, routes: tuple["Route", ...]) -> int:
    size = sys.getsizeof(topic) + _ENTRY_OVERHEAD
    for route in routes:
        size += _ROUTE_OVERHEAD + sys.getsizeof(route.key)
        if route.stream is not None:
            size += sys.getsizeof(route.stream)
    return size


@dataclass(frozen=True, slots=True)
class Match:
    """A rule that matches a topic, with the levels its `{name}` captures matched."""

    rule: Rule
    captures: Mapping[str, str]


@dataclass(frozen=True, slots=True)
class Route:
    """Where one message goes for one rule.

    `stream` is None and `error` says why when the stream name rendered invalid for this topic:
    the bridge dead-letters the message for that rule instead.
    """

    rule: Rule
    stream: str | None
    key: str
    error: str | None = None


class _Target:
    """A rule as the trie holds it, with everything routing needs taken out of it once.

    Reading a pydantic private attribute (`rule.stream_template`) costs about a microsecond,
    and constant stream names and keys need rendering and checking only once.
    """

    __slots__ = ("captures", "fixed", "key", "position", "rule", "stream")

    def __init__(self, position: int, rule: Rule) -> None:
        self.position = position
        self.rule = rule
        self.captures = rule.filter.captures
        self.stream: StreamTemplate = rule.stream_template
        self.key: Template = rule.key_template
        self.fixed: Route | None = None
        if self.stream.is_constant and self.key.is_constant:
            # A constant stream template passed the name checks when the rule was built.
            self.fixed = Route(rule, self.stream.source, self.key.source)

    def route(self, levels: list[str], topic: str) -> Route:
        if self.fixed is not None:
            return self.fixed
        captures = {name: levels[index] for name, index in self.captures}
        key = self.key.render(captures, topic)
        try:
            stream = self.stream.render_name(captures, topic)
        except RenderError as exc:
            return Route(self.rule, None, key, str(exc))
        return Route(self.rule, stream, key)


_by_position = attrgetter("position")


class _Node:
    __slots__ = ("children", "hash", "plus", "rules")

    def __init__(self) -> None:
        self.children: dict[str, _Node] = {}
        self.plus: _Node | None = None
        self.rules: list[_Target] = []  # filters that end at this node
        self.hash: list[_Target] = []  # filters that end with '#' below this node


class Matcher:
    """Matches topics against the enabled rules among `rules` (disabled ones are ignored).

    Results follow the order of `rules`. Rules are assumed to have distinct ids (the store and
    `parse_rules` see to it); a rule listed twice matches twice.
    """

    def __init__(self, rules: Iterable[Rule], *, cache_size: int = _ROUTE_CACHE_SIZE) -> None:
        """Build the trie; `cache_size` bounds the route cache (0 turns it off)."""
        self._rules: tuple[Rule, ...] = tuple(rules)
        self._root = _Node()
        self._cache: dict[str, tuple[Route, ...]] = {}
        self._cache_size = cache_size
        self._cache_bytes = 0
        for position, rule in enumerate(self._rules):
            if rule.enabled:
                self._add(_Target(position, rule))

    def _add(self, target: _Target) -> None:
        node = self._root
        topic_filter = target.rule.filter
        for wanted in topic_filter.pattern:
            if wanted is None:
                if node.plus is None:
                    node.plus = _Node()
                node = node.plus
            else:
                child = node.children.get(wanted)
                if child is None:
                    child = node.children[wanted] = _Node()
                node = child
        if topic_filter.multi_level:
            node.hash.append(target)
        else:
            node.rules.append(target)

    @property
    def rules(self) -> tuple[Rule, ...]:
        """All rules as given, disabled ones included."""
        return self._rules

    def subscriptions(self) -> dict[str, int]:
        """MQTT filter -> QoS to SUBSCRIBE with: captures as `+`, the max QoS of its rules.

        Filters appear in the order of their first enabled rule.
        """
        wanted: dict[str, int] = {}
        for rule in self._rules:
            if rule.enabled:
                subscription = rule.filter.subscription
                wanted[subscription] = max(wanted.get(subscription, 0), rule.qos)
        return wanted

    def _targets(self, topic: str) -> list[_Target]:
        levels = topic.split("/")
        found: list[_Target] = []
        nodes = [self._root]
        # MQTT: a wildcard first level does not match a topic whose first level starts with '$'.
        skip_wildcards = topic.startswith("$")
        for level in levels:
            following: list[_Node] = []
            for node in nodes:
                if node.hash and not skip_wildcards:
                    found.extend(node.hash)
                child = node.children.get(level)
                if child is not None:
                    following.append(child)
                if node.plus is not None and not skip_wildcards:
                    following.append(node.plus)
            if not following:
                break
            nodes = following
            skip_wildcards = False
        else:
            for node in nodes:
                # 'a/#' matches 'a' itself: the parent level of '#'.
                found.extend(node.rules)
                found.extend(node.hash)
        if len(found) > 1:
            found.sort(key=_by_position)
        return found

    def match(self, topic: str) -> list[Match]:
        """The enabled rules whose filter matches `topic`, in rule order, with captures."""
        levels = topic.split("/")
        return [
            Match(target.rule, {name: levels[index] for name, index in target.captures})
            for target in self._targets(topic)
        ]

    def route(self, topic: str) -> list[Route]:
        """Where a message on `topic` goes: one Route per matching enabled rule, in rule order.

        An empty list means no rule matches. Results are cached per topic (as tuples: each
        call gets its own list).
        """
        routes = self._cache.get(topic)
        if routes is None:
            routes = self._route(topic)
            if self._cache_size and len(topic) <= _CACHED_TOPIC_LENGTH:
                size = _entry_bytes(topic, routes)
                if (
                    len(self._cache) >= self._cache_size
                    or self._cache_bytes + size > _ROUTE_CACHE_BYTES
                ):
                    self._cache.clear()
                    self._cache_bytes = 0
                self._cache[topic] = routes
                self._cache_bytes += size
        return list(routes)

    def _route(self, topic: str) -> tuple[Route, ...]:
        targets = self._targets(topic)
        if not targets:
            return ()
        levels = topic.split("/")
        return tuple([target.route(levels, topic) for target in targets])
