"""The last N records of a stream (`HStreamClient.read_last`), with bounded work.

The search itself (`reader.last_records`) is checked against a model shard with sparse batch ids
(LogDevice LSNs jump by 2**32 at an epoch change) and batches of any size; the client against
the embedded store.
"""

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.hstream import HStreamClient, Record, RecordId
from bridge.hstream.reader import FIRST_BATCH, last_records
from bridge.hstream.records import ReceivedRecord

EPOCH = 1 << 32


class ModelShard:
    """Batches at given ids; `read` behaves like a shard reader stopped at the tail."""

    def __init__(self, batches: list[tuple[int, int]]) -> None:
        self.records = [
            ReceivedRecord(RecordId(0, batch_id, index), b"", "", {}, 0.0)
            for batch_id, size in sorted(batches)
            for index in range(size)
        ]
        self.tail = max((batch_id for batch_id, _ in batches), default=0)
        self.probes = 0
        self.most_read = 0

    async def read(self, start: int, limit: int | None) -> tuple[list[ReceivedRecord], bool]:
        assert start >= FIRST_BATCH
        self.probes += 1
        found = [r for r in self.records if r.id.batch_id >= start]
        kept = found if limit is None else found[:limit]
        self.most_read = max(self.most_read, len(kept))
        return kept, len(kept) == len(found)


def last(shard: ModelShard, count: int) -> list[ReceivedRecord]:
    return asyncio.run(last_records(shard.tail, shard.read, count))


@st.composite
def sparse_batches(draw: st.DrawFn) -> list[tuple[int, int]]:
    """Batch ids in a few epochs (each a dense or gappy run), batch sizes 1 to 50."""
    batches: list[tuple[int, int]] = []
    for epoch in range(draw(st.integers(1, 4))):
        batch_id = epoch * EPOCH + draw(st.integers(1, 3))
        for _ in range(draw(st.integers(0, 30))):
            batches.append((batch_id, draw(st.integers(1, 50))))
            batch_id += draw(st.sampled_from([1, 1, 1, 2, 7, 1000]))
    return batches


@settings(max_examples=300, deadline=None)
@given(batches=sparse_batches(), count=st.integers(1, 120))
def test_last_records_finds_the_last_n_with_bounded_reads(
    batches: list[tuple[int, int]], count: int
) -> None:
    shard = ModelShard(batches)
    found = last(shard, count)
    assert found == shard.records[-count:]
    largest_batch = max((size for _, size in batches), default=0)
    assert shard.most_read <= max(2 * count + 1, count + largest_batch)
    assert shard.probes <= 2 * 66 + 1


def test_one_record_per_batch_takes_one_read() -> None:
    shard = ModelShard([(i, 1) for i in range(1, 10_001)])
    assert [r.id.batch_id for r in last(shard, 20)] == list(range(9981, 10_001))
    assert shard.probes == 1


def test_a_huge_older_epoch_is_not_read_whole() -> None:
    # 3 records in the current epoch, 100,000 in the one before: only about what is needed is read.
    shard = ModelShard([(EPOCH + i, 1) for i in range(1, 100_001)] + [(2 * EPOCH + 1, 3)])
    found = last(shard, 20)
    assert [r.id.batch_id for r in found] == [EPOCH + i for i in range(99_984, 100_001)] + [
        2 * EPOCH + 1
    ] * 3
    assert shard.most_read <= 40
    assert shard.probes <= 2 * 66 + 1


def test_an_empty_shard_or_no_count_reads_nothing() -> None:
    shard = ModelShard([])
    assert last(shard, 5) == []
    assert shard.probes == 0
    assert last(ModelShard([(1, 3)]), 0) == []


async def test_read_last_returns_the_latest_records_oldest_first(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    ids: list[RecordId] = []
    for i in range(30):  # one record per append
        ids += await client.append(name, [Record(b"%d" % i)])
    ids += await client.append(name, [Record(b"big-%d" % i) for i in range(25)])  # one batch
    ids += await client.append(name, [Record(b"end")])
    found = await client.read_last(name, 10)
    assert [r.id for r in found] == ids[-10:]
    assert found[-1].payload == b"end"
    assert [r.id for r in await client.read_last(name, 40)] == ids[-40:]
    assert [r.id for r in await client.read_last(name, 1000)] == ids


async def test_read_last_merges_shards_by_publish_time(client: HStreamClient, name: str) -> None:
    await client.create_stream(name, shard_count=3)
    for i in range(12):
        await client.append(name, [Record(b"%d" % i, key=f"k{i}")])
        await asyncio.sleep(0.002)  # publish times are in milliseconds
    found = await client.read_last(name, 5)
    assert [r.payload for r in found] == [b"%d" % i for i in range(7, 12)]


async def test_read_last_of_an_empty_stream_is_empty(client: HStreamClient, name: str) -> None:
    await client.create_stream(name, shard_count=2)
    assert await client.read_last(name, 5) == []
    await client.append(name, [Record(b"x")])
    assert await client.read_last(name, 0) == []
