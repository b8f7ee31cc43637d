"""The byte-bounded FIFO cache under the router's header cache and the shard key cache."""

import sys

import pytest

from bridge.cache import ENTRY_OVERHEAD, ByteBudgetCache


def str_size(key: str, value: bytes) -> int:
    return sys.getsizeof(key) + sys.getsizeof(value)


def test_entries_are_accounted_by_their_objects_plus_the_slot() -> None:
    cache: ByteBudgetCache[str, bytes] = ByteBudgetCache(1 << 20, str_size)
    assert cache.put("a", b"x" * 100)
    assert cache.put("b" * 50, b"")
    assert cache.data == {"a": b"x" * 100, "b" * 50: b""}
    expected = str_size("a", b"x" * 100) + str_size("b" * 50, b"") + 2 * ENTRY_OVERHEAD
    assert cache.used == expected
    # Putting a key again replaces it and its cost.
    assert cache.put("a", b"")
    assert cache.used == str_size("a", b"") + str_size("b" * 50, b"") + 2 * ENTRY_OVERHEAD
    assert len(cache) == 2
    cache.clear()
    assert (cache.data, cache.used) == ({}, 0)


def test_over_budget_the_oldest_entries_go_until_half_the_budget_is_left() -> None:
    one = str_size("k000", b"v" * 100) + ENTRY_OVERHEAD
    cache: ByteBudgetCache[str, bytes] = ByteBudgetCache(10 * one, str_size)
    for n in range(10):
        cache.put(f"k{n:03}", b"v" * 100)
    assert len(cache) == 10
    assert cache.used == 10 * one
    cache.put("k010", b"v" * 100)
    assert cache.used <= 5 * one
    assert list(cache.data) == ["k006", "k007", "k008", "k009", "k010"]  # the newest stay
    for n in range(11, 1000):
        cache.put(f"k{n:03}", b"v" * 100)
        assert cache.used <= cache.budget
    assert cache.used == sum(cache.cost(k, v) for k, v in cache.data.items())
    assert "k999" in cache.data


def test_an_entry_over_the_limit_is_not_cached() -> None:
    cache: ByteBudgetCache[str, bytes] = ByteBudgetCache(100_000, str_size, max_entry_bytes=2000)
    assert not cache.put("big", b"x" * 2000)
    assert cache.put("small", b"x" * 100)
    assert "big" not in cache.data
    assert cache.used == cache.cost("small", b"x" * 100)
    # Without a limit, at most half the budget: the entry just put survives its own eviction.
    half: ByteBudgetCache[str, bytes] = ByteBudgetCache(10_000, str_size)
    assert half.max_entry_bytes == 5000
    assert not half.put("big", b"x" * 5000)
    assert half.put("a", b"x" * 4000)
    assert half.put("b", b"x" * 4000)
    assert half.put("c", b"x" * 4000)  # over budget: down to half, the newest survives
    assert list(half.data) == ["c"]


def test_a_zero_budget_caches_nothing_and_a_negative_one_is_refused() -> None:
    cache: ByteBudgetCache[str, bytes] = ByteBudgetCache(0, str_size)
    assert not cache.put("a", b"")
    assert cache.data == {}
    with pytest.raises(ValueError, match="negative"):
        ByteBudgetCache(-1, str_size)
