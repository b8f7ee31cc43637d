"""Rendezvous placement: stable, spread, and minimal movement when a member goes."""

from collections import Counter

from bridge.cluster.placement import owner

MEMBERS = ["a", "b", "c"]
SOURCES = [f"source-{n}" for n in range(300)]


def test_every_source_has_one_owner_whatever_the_order_of_members() -> None:
    for source in SOURCES:
        assert owner(source, MEMBERS) == owner(source, reversed(MEMBERS))
    assert owner("x", []) is None


def test_sources_spread_over_members() -> None:
    counts = Counter(owner(source, MEMBERS) for source in SOURCES)
    assert set(counts) == set(MEMBERS)
    assert min(counts.values()) > 60  # 100 each on average


def test_when_a_member_goes_only_its_sources_move() -> None:
    before = {source: owner(source, MEMBERS) for source in SOURCES}
    after = {source: owner(source, ["a", "b"]) for source in SOURCES}
    moved = [s for s in SOURCES if before[s] != after[s]]
    assert moved
    assert all(before[s] == "c" for s in moved)
