"""The Matcher: trie matching equals a scan, routing renders streams and keys, subscriptions."""

import random
import re
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from rules.matcher import Match, Matcher, Route
from rules.model import Rule


def rule(rule_id: str, topic: str, stream: str = "s", **fields: object) -> Rule:
    return Rule.model_validate({"id": rule_id, "topic": topic, "stream": stream, **fields})


def ids(matches: list[Match]) -> list[str]:
    return [match.rule.id for match in matches]


def test_example_rule_routes_to_the_captured_site_stream_and_key() -> None:
    temps = rule("temps", "sensors/{site}/+/temp", "temps_${site}", key="${site}")
    matcher = Matcher([temps])

    assert matcher.route("sensors/lab/3/temp") == [Route(temps, "temps_lab", "lab", None)]
    assert matcher.route("sensors/lab/3/hum") == []
    assert matcher.match("sensors/lab/3/temp") == [Match(temps, {"site": "lab"})]


def test_matches_come_in_rule_order_whatever_the_trie_branch() -> None:
    rules = [
        rule("hash", "a/#"),
        rule("exact", "a/b/c"),
        rule("root-hash", "#"),
        rule("plus", "a/+/c"),
        rule("capture", "{x}/b/{y}"),
        rule("other", "a/b/d"),
    ]
    matcher = Matcher(rules)

    assert ids(matcher.match("a/b/c")) == ["hash", "exact", "root-hash", "plus", "capture"]
    assert ids(Matcher(list(reversed(rules))).match("a/b/c")) == [
        "capture",
        "plus",
        "root-hash",
        "exact",
        "hash",
    ]


def test_hash_matches_its_parent_level() -> None:
    matcher = Matcher([rule("a", "a/#"), rule("ab", "a/b/#")])

    assert ids(matcher.match("a")) == ["a"]
    assert ids(matcher.match("a/b")) == ["a", "ab"]
    assert ids(matcher.match("a/b/c/d")) == ["a", "ab"]
    assert ids(matcher.match("b")) == []


def test_dollar_topics_match_only_filters_with_a_literal_first_level() -> None:
    matcher = Matcher(
        [
            rule("all", "#"),
            rule("plus", "+/broker/#"),
            rule("capture", "{root}/broker/load"),
            rule("sys", "$SYS/#"),
            rule("sys-load", "$SYS/{node}/load"),
        ]
    )

    assert ids(matcher.match("$SYS/broker/load")) == ["sys", "sys-load"]
    assert ids(matcher.match("$SYS")) == ["sys"]
    assert ids(matcher.match("x/broker/load")) == ["all", "plus", "capture"]
    assert ids(matcher.match("x/$SYS")) == ["all"]


def test_disabled_rules_neither_match_nor_subscribe() -> None:
    rules = [rule("on", "a/+"), rule("off", "a/b", enabled=False), rule("off2", "z", enabled=False)]
    matcher = Matcher(rules)

    assert ids(matcher.match("a/b")) == ["on"]
    assert matcher.subscriptions() == {"a/+": 1}
    assert matcher.rules == tuple(rules)


def test_subscriptions_use_plus_for_captures_and_the_highest_qos_per_filter() -> None:
    matcher = Matcher(
        [
            rule("t0", "sensors/{site}/+/temp", qos=0),
            rule("t2", "sensors/+/{dev}/temp", qos=2),
            rule("t1", "sensors/+/+/temp", qos=1),
            rule("all", "#", qos=0),
            rule("hum", "sensors/{site}/+/hum", qos=1),
            rule("hum0", "sensors/{x}/{y}/hum", qos=0),
            rule("off", "#", qos=2, enabled=False),
        ]
    )

    assert matcher.subscriptions() == {"sensors/+/+/temp": 2, "#": 0, "sensors/+/+/hum": 1}
    assert list(matcher.subscriptions()) == ["sensors/+/+/temp", "#", "sensors/+/+/hum"]


def test_no_rules_match_nothing_and_subscribe_to_nothing() -> None:
    matcher = Matcher([])

    assert matcher.match("a") == []
    assert matcher.route("a") == []
    assert matcher.subscriptions() == {}


def test_route_renders_every_matching_rule() -> None:
    by_site = rule("by-site", "s/{site}/{kind}", "m_${site}_${kind}", key="${kind}@${site}")
    by_topic = rule("by-topic", "s/#", "t_${topic}", key="${topic}")
    fixed = rule("fixed", "s/+/+", "everything", key="k")
    matcher = Matcher([by_site, by_topic, fixed])

    assert matcher.route("s/lab 1/t.c") == [
        Route(by_site, "m_lab_1_t_c", "t.c@lab 1"),
        Route(by_topic, "t_s_lab_1_t_c", "s/lab 1/t.c"),
        Route(fixed, "everything", "k"),
    ]


def test_invalid_rendered_stream_is_a_route_error_not_an_exception() -> None:
    bad = rule("bad", "s/{site}", "${site}", key="${site}")
    good = rule("good", "s/+", "ok")
    matcher = Matcher([bad, good])

    first, second = matcher.route("s/1lab")
    assert first.rule is bad
    assert first.stream is None
    assert first.key == "1lab"
    assert first.error is not None
    assert "must start with a letter" in first.error
    assert second == Route(good, "ok", "")
    assert matcher.route("s/lab")[0] == Route(bad, "lab", "lab")


def test_route_cache_returns_the_same_result_and_stays_bounded() -> None:
    temps = rule("temps", "s/{site}", "t_${site}")
    matcher = Matcher([temps], cache_size=10)

    first = matcher.route("s/a")
    first.clear()  # the caller's list: changing it does not change the cache
    assert matcher.route("s/a") == [Route(temps, "t_a", "")]
    assert "s/a" in matcher._cache
    for n in range(100):
        assert matcher.route(f"s/x{n}") == [Route(temps, f"t_x{n}", "")]
    assert len(matcher._cache) <= 10
    long_topic = "s/" + "a" * 1000
    assert matcher.route(long_topic)[0].error is not None  # 1002-char name is too long
    assert long_topic not in matcher._cache


def test_route_without_cache_gives_the_same_routes() -> None:
    rules = [rule("a", "s/{x}/#", "a_${x}", key="${topic}"), rule("b", "#", "b")]
    cached, uncached = Matcher(rules), Matcher(rules, cache_size=0)

    for topic in ["s/1", "s/x/y", "t", "s/1", "$x"]:
        assert cached.route(topic) == uncached.route(topic)
    assert uncached._cache == {}


# --- trie against a scan over a reference matcher -------------------------------------------


def reference_match(topic_filter: str, topic: str) -> dict[str, str] | None:
    """MQTT matching written differently from the code under test: one regex per filter."""
    levels = topic_filter.split("/")
    multi = levels[-1] == "#"
    if multi:
        levels.pop()
    parts: list[str] = []
    names: list[str] = []
    for level in levels:
        if level == "+":
            parts.append("[^/]*")
        elif level.startswith("{"):
            names.append(level[1:-1])
            parts.append("([^/]*)")
        else:
            parts.append(re.escape(level))
    pattern = "/".join(parts)
    if multi:
        pattern = f"{pattern}(?:/.*)?" if parts else ".*"
    if topic.startswith("$") and (not levels or levels[0] == "+" or levels[0].startswith("{")):
        return None
    found = re.fullmatch(pattern, topic, re.DOTALL)
    if found is None:
        return None
    return dict(zip(names, found.groups(), strict=True))


WORDS = ["a", "b", "", "$x", "$SYS"]
filter_level = st.sampled_from(["a", "b", "", "$x", "+", "{}"])


@st.composite
def filters(draw: st.DrawFn) -> str:
    levels = draw(st.lists(filter_level, min_size=0, max_size=4))
    captured = 0
    written: list[str] = []
    for level in levels:
        if level == "{}":
            level = f"{{c{captured}}}"
            captured += 1
        written.append(level)
    if written in ([], [""]) or draw(st.booleans()):
        written.append("#")
    return "/".join(written)


# Empty levels are fine, an empty topic is not a topic.
topics = st.lists(st.sampled_from(WORDS), min_size=1, max_size=5).map("/".join).filter(bool)


@settings(max_examples=300, deadline=None)
@given(
    rule_specs=st.lists(st.tuples(filters(), st.booleans()), max_size=30),
    sample=st.lists(topics, min_size=1, max_size=30),
)
def test_trie_matches_exactly_what_a_scan_of_every_rule_matches(
    rule_specs: list[tuple[str, bool]], sample: list[str]
) -> None:
    rules = [
        rule(f"r{n}", topic_filter, enabled=enabled)
        for n, (topic_filter, enabled) in enumerate(rule_specs)
    ]
    matcher = Matcher(rules)

    for topic in sample:
        expected = []
        for candidate in rules:
            captures = reference_match(candidate.topic, topic)
            assert candidate.filter.match(topic) == captures  # TopicFilter.match agrees too
            if candidate.enabled and captures is not None:
                expected.append((candidate.id, captures))
        assert [(m.rule.id, dict(m.captures)) for m in matcher.match(topic)] == expected
        assert [r.rule.id for r in matcher.route(topic)] == [rule_id for rule_id, _ in expected]


def test_trie_equals_scan_on_many_random_rules_and_topics() -> None:
    chooser = random.Random(20240601)
    vocabulary = ["a", "b", "c", "d", "", "$s"]
    rules = []
    for n in range(400):
        levels = []
        for depth in range(chooser.randint(1, 5)):
            kind = chooser.random()
            if kind < 0.2:
                levels.append("+")
            elif kind < 0.35:
                levels.append(f"{{v{depth}}}")
            else:
                levels.append(chooser.choice(vocabulary))
        if levels == [""] or chooser.random() < 0.3:
            levels.append("#")
        rules.append(rule(f"r{n}", "/".join(levels), enabled=chooser.random() < 0.9))
    matcher = Matcher(rules)

    for _ in range(2000):
        topic = "/".join(chooser.choice(vocabulary) for _ in range(chooser.randint(1, 6))) or "/"
        expected = [
            (r.id, captures)
            for r in rules
            if r.enabled and (captures := reference_match(r.topic, topic)) is not None
        ]
        assert [(m.rule.id, dict(m.captures)) for m in matcher.match(topic)] == expected


def test_routing_cost_does_not_grow_with_the_number_of_rules() -> None:
    # 1,000 rules, 20,000 distinct topics, cache off: a scan of every rule costs milliseconds per
    # topic here; the trie costs microseconds. The bound is generous for a busy 2-core machine.
    rules = [
        rule(f"r{n}", f"site{n}/{{dev}}/+/temp", f"t{n}_${{dev}}", key="${dev}")
        for n in range(1000)
    ]
    matcher = Matcher(rules, cache_size=0)
    sample = [f"site{n % 1000}/d{n}/x/temp" for n in range(20_000)]

    started = time.perf_counter()
    for topic in sample:
        matcher.route(topic)
    per_message = (time.perf_counter() - started) / len(sample)

    assert per_message < 100e-6, f"{per_message * 1e6:.1f} us per message"


def test_the_route_cache_is_bounded_in_bytes_not_only_in_count() -> None:
    import tracemalloc

    rule = Rule(id="mem", topic="mem/#", stream="mem_${topic}", key="${topic}")
    matcher = Matcher([rule])
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for n in range(40_000):  # 40,000 topics of 500 characters: ~100 MB if only counted
        matcher.route(f"mem/{n:08d}/" + "x" * 487)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert held < 12 * 1024 * 1024, f"route cache holds {held} bytes"
