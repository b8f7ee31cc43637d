"""Partition keys to shards, exactly as the official HStreamDB clients map them.

The key space is `[0, 2**128 - 1]`. A stream of N shards splits it into N ranges of
`(2**128 - 1) // N` keys each (both ends inclusive); the last range ends at `2**128 - 1`.
A key hashes to `int(md5(key).hexdigest(), 16)`; no key means the empty string.

Keys repeat (one per device), so the shard a key maps to is cached. The cache is bounded in bytes,
not entries (a key can be an MQTT topic of up to 64 KiB), and it is shared by every map with the
same key ranges: streams the bridge creates all have the same `--stream-shards` ranges, so a
thousand streams cost one cache, not a thousand. It maps a key to the index of its range; each map
turns the index into its own shard id.
"""

import bisect
import hashlib
import sys
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

from bridge.cache import ByteBudgetCache

KEY_SPACE_MAX = 2**128 - 1

# Bytes of one key cache, shared by the maps of one key-range layout (about 55,000 keys of 20
# characters, or 7,000 of 1 KiB). Alive while a map of that layout is: usually one or two in all.
# A fleet's device ids are the keys of every stream of that layout: 10,000 of them take 1.5 MB,
# and with 1 MiB the FIFO cache missed on nearly every record of the fan-out benchmark.
SHARD_CACHE_BYTES = 8 * 1024 * 1024
# Longer keys are hashed each time (md5 of 1 KiB takes about 2 us): they would crowd the cache.
SHARD_CACHE_MAX_KEY = 1024

_Layout = tuple[tuple[int, int], ...]
_layout_caches: "weakref.WeakValueDictionary[_Layout, ByteBudgetCache[str, int]]" = (
    weakref.WeakValueDictionary()
)


def _key_size(key: str, index: int) -> int:
    return sys.getsizeof(key)  # the index is a small int, shared by the interpreter


def layout_cache(layout: _Layout) -> ByteBudgetCache[str, int]:
    """The key-to-range-index cache of the maps with these `(start, end)` ranges."""
    cache = _layout_caches.get(layout)
    if cache is None:
        cache = _layout_caches[layout] = ByteBudgetCache(SHARD_CACHE_BYTES, _key_size)
    return cache


def hash_key(key: str) -> int:
    """The position of a partition key in the key space."""
    return int.from_bytes(hashlib.md5(key.encode()).digest(), "big")


def split_key_space(shard_count: int) -> list[tuple[int, int]]:
    """The inclusive `(start, end)` ranges of `shard_count` shards, in order."""
    if shard_count < 1:
        raise ValueError("shard_count must be at least 1")
    size = KEY_SPACE_MAX // shard_count
    ranges = [(i * size, i * size + size - 1) for i in range(shard_count)]
    start, _ = ranges[-1]
    ranges[-1] = (start, KEY_SPACE_MAX)
    return ranges


@dataclass(frozen=True, slots=True)
class ShardRange:
    shard_id: int
    start: int
    end: int


class ShardMap:
    """Finds the active shard that owns a partition key (binary search over the ranges)."""

    __slots__ = ("_cache", "_ends", "_ids", "_keys", "_only", "_ranges")

    def __init__(self, ranges: Iterable[ShardRange]) -> None:
        self._ranges = sorted(ranges, key=lambda r: r.start)
        if not self._ranges:
            raise ValueError("a stream has at least one active shard")
        self._ends = [r.end for r in self._ranges]
        self._ids = tuple(r.shard_id for r in self._ranges)
        only = self._ranges[0]
        whole = len(self._ranges) == 1 and only.start == 0 and only.end == KEY_SPACE_MAX
        self._only = only.shard_id if whole else None
        self._keys = layout_cache(tuple((r.start, r.end) for r in self._ranges))
        self._cache = self._keys.data  # read directly: a hit is one dict lookup

    @property
    def shard_ids(self) -> list[int]:
        return list(self._ids)

    def shard_for(self, key: str) -> int:
        if self._only is not None:
            return self._only
        index = self._cache.get(key)
        if index is None:
            index = self._index(key)
            if len(key) <= SHARD_CACHE_MAX_KEY:
                self._keys.put(key, index)
        return self._ids[index]

    def _index(self, key: str) -> int:
        """The index in `_ranges` of the range that holds the key."""
        position = hash_key(key)
        index = bisect.bisect_left(self._ends, position)
        if index == len(self._ranges):
            index -= 1
        shard = self._ranges[index]
        if not shard.start <= position <= shard.end:
            raise LookupError(f"no shard covers key {key!r}")
        return index
