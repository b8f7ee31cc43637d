"""Keys to shards, and the byte-bounded key cache the maps of one key-range layout share."""

import bisect
import gc
import itertools
import tracemalloc

import pytest

from bridge.hstream import shards
from bridge.hstream.shards import (
    KEY_SPACE_MAX,
    SHARD_CACHE_BYTES,
    SHARD_CACHE_MAX_KEY,
    ShardMap,
    ShardRange,
    hash_key,
    split_key_space,
)


def shard_map(count: int, first_id: int) -> ShardMap:
    return ShardMap(
        ShardRange(first_id + i, start, end)
        for i, (start, end) in enumerate(split_key_space(count))
    )


def reference(count: int, first_id: int, key: str) -> int:
    """The shard by a linear scan over the ranges, written apart from the code under test."""
    position = hash_key(key)
    for i, (start, end) in enumerate(split_key_space(count)):
        if start <= position <= end:
            return first_id + i
    raise AssertionError("the key space is covered")


def test_maps_of_one_layout_share_the_cache_and_each_answers_its_own_ids() -> None:
    a, b, c = shard_map(4, 100), shard_map(4, 200), shard_map(3, 300)
    assert a._keys is b._keys
    assert a._keys is not c._keys
    keys = [f"device-{i}" for i in range(200)]
    for key in keys * 2:  # the second round comes from the cache
        assert a.shard_for(key) == reference(4, 100, key)
        assert b.shard_for(key) == reference(4, 200, key)
        assert c.shard_for(key) == reference(3, 300, key)
    assert a.shard_ids == [100, 101, 102, 103]
    assert set(keys) <= set(a._cache)


def test_a_whole_key_space_shard_needs_no_cache() -> None:
    only = ShardMap([ShardRange(7, 0, KEY_SPACE_MAX)])
    assert only.shard_for("anything") == 7
    assert "anything" not in only._cache


def test_a_key_no_range_covers_raises_and_is_not_cached() -> None:
    half = KEY_SPACE_MAX // 2
    gap = ShardMap([ShardRange(1, 0, half)])
    low = next(f"k{i}" for i in range(100) if hash_key(f"k{i}") <= half)
    high = next(f"k{i}" for i in range(100) if hash_key(f"k{i}") > half)
    assert gap.shard_for(low) == 1
    with pytest.raises(LookupError):
        gap.shard_for(high)
    assert high not in gap._cache


def test_the_key_cache_is_bounded_in_bytes_and_skips_long_keys() -> None:
    # 10,000 distinct 16 KiB keys: a count-bounded cache (65,536 per map) would keep them all,
    # 160 MB per stream. Keys over SHARD_CACHE_MAX_KEY are hashed each time instead.
    m = shard_map(4, 0)
    cache = m._keys
    cache.clear()
    long_keys = [f"{n:08}/" + "k" * 16_000 for n in range(100)]
    for key in long_keys:
        assert m.shard_for(key) == reference(4, 0, key)
    assert cache.used == 0
    assert len(cache) == 0

    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        for n in range(10_000):
            key = f"{n:08}/" + "k" * (SHARD_CACHE_MAX_KEY - 9)  # exactly the longest cached
            m.shard_for(key)
            assert cache.used <= SHARD_CACHE_BYTES
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert 400 <= len(cache) <= SHARD_CACHE_BYTES // SHARD_CACHE_MAX_KEY
    assert after - before <= SHARD_CACHE_BYTES + 64 * 1024, (after - before, cache.used)
    newest = f"{9_999:08}/" + "k" * (SHARD_CACHE_MAX_KEY - 9)
    assert newest in m._cache


def test_a_layout_cache_goes_when_its_last_map_goes() -> None:
    layout = tuple(split_key_space(5))
    m = shard_map(5, 0)
    m.shard_for("x")
    assert layout in shards._layout_caches
    del m
    gc.collect()
    assert layout not in shards._layout_caches


def test_split_key_space_ranges_are_contiguous_and_end_at_the_top() -> None:
    ranges = split_key_space(7)
    assert ranges[0][0] == 0
    assert ranges[-1][1] == KEY_SPACE_MAX
    assert all(prev[1] + 1 == nxt[0] for prev, nxt in itertools.pairwise(ranges))
    ends = [end for _, end in ranges]
    assert bisect.bisect_left(ends, KEY_SPACE_MAX) == 6
