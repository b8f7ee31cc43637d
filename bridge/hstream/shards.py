"""Partition keys to shards, exactly as the official HStreamDB clients map them.

The key space is `[0, 2**128 - 1]`. A stream of N shards splits it into N ranges of
`(2**128 - 1) // N` keys each (both ends inclusive); the last range ends at `2**128 - 1`.
A key hashes to `int(md5(key).hexdigest(), 16)`; no key means the empty string.
"""

import bisect
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

KEY_SPACE_MAX = 2**128 - 1


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

    __slots__ = ("_cache", "_ends", "_only", "_ranges")

    CACHE_SIZE = 65536

    def __init__(self, ranges: Iterable[ShardRange]) -> None:
        self._ranges = sorted(ranges, key=lambda r: r.start)
        if not self._ranges:
            raise ValueError("a stream has at least one active shard")
        self._ends = [r.end for r in self._ranges]
        only = self._ranges[0]
        whole = len(self._ranges) == 1 and only.start == 0 and only.end == KEY_SPACE_MAX
        self._only = only.shard_id if whole else None
        self._cache: dict[str, int] = {}

    @property
    def shard_ids(self) -> list[int]:
        return [r.shard_id for r in self._ranges]

    def shard_for(self, key: str) -> int:
        if self._only is not None:
            return self._only
        shard_id = self._cache.get(key)
        if shard_id is None:
            if len(self._cache) >= self.CACHE_SIZE:
                self._cache.clear()
            shard_id = self._cache[key] = self._lookup(key)
        return shard_id

    def _lookup(self, key: str) -> int:
        position = hash_key(key)
        index = bisect.bisect_left(self._ends, position)
        shard = self._ranges[min(index, len(self._ranges) - 1)]
        if not shard.start <= position <= shard.end:
            raise LookupError(f"no shard covers key {key!r}")
        return shard.shard_id
