"""The non-overlapping cover of wanted filters that keeps brokers from sending copies."""

import pytest

from bridge.mqtt._filters import merge, non_overlapping, overlaps


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("a/b", "a/b", True),
        ("a/b", "a/c", False),
        ("a/+", "a/b", True),
        ("a/+/c", "a/b/+", True),
        ("a/+/c", "a/b/d", False),
        ("a/#", "a", True),  # `#` also matches the parent level
        ("a/#", "b/#", False),
        ("a", "a/b", False),
        ("#", "$SYS/x", False),  # wildcard first levels never match `$` topics
        ("+/x", "$SYS/x", False),
        ("$SYS/#", "$SYS/x", True),
        ("#", "+", True),
    ],
)
def test_overlap_means_some_topic_matches_both(first: str, second: str, expected: bool) -> None:
    assert overlaps(first, second) is expected
    assert overlaps(second, first) is expected


@pytest.mark.parametrize(
    ("first", "second", "expected"),
    [
        ("sensors/#", "sensors/+/+/temp", "sensors/#"),
        ("a/+/c", "a/b/c", "a/+/c"),
        ("a/+/c", "a/b/+", "a/+/+"),
        ("a", "a/#", "a/#"),
    ],
)
def test_merge_is_the_least_general_cover(first: str, second: str, expected: str) -> None:
    assert merge(first, second) == expected
    assert merge(second, first) == expected


def test_non_overlapping_cover_keeps_disjoint_filters_and_the_highest_qos() -> None:
    wanted = {"sensors/+/+/temp": 1, "other/x": 0, "sensors/#": 0, "a/+/c": 0, "a/b/+": 2}
    cover = non_overlapping(wanted)
    assert cover == {"other/x": 0, "sensors/#": 1, "a/+/+": 2}
    assert not any(overlaps(x, y) for x in cover for y in cover if x != y)


def test_merging_can_cascade_into_filters_that_did_not_overlap_before() -> None:
    # a/b/c and a/x/d are disjoint, but a/+/c merged with a/x/+ covers both.
    cover = non_overlapping({"a/b/c": 0, "a/x/d": 0, "a/+/c": 1, "a/x/+": 0})
    assert cover == {"a/+/+": 1}
