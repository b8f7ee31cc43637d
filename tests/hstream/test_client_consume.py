"""Subscriptions (consume, ack, redelivery) and shard readers against a real embedded store."""

import asyncio

from bridge.hstream import Consumer, HStreamClient, Record, RecordId, StreamReader
from bridge.hstream.records import ReceivedRecord


async def _next_batch(consumer: Consumer, within: float = 10.0) -> list[ReceivedRecord]:
    return await asyncio.wait_for(anext(consumer), within)


async def test_consumer_receives_appended_batches_and_acked_records_are_not_redelivered(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    await client.create_subscription(f"{name}_sub", name, ack_timeout=1, offset="earliest")
    ids = await client.append(name, [Record(b"m%d" % i) for i in range(3)])
    second = await client.append(name, [Record(b"later")])

    async with client.subscribe(f"{name}_sub", "worker-1") as consumer:
        batch = await _next_batch(consumer)
        assert [r.id for r in batch] == ids
        assert [r.payload for r in batch] == [b"m0", b"m1", b"m2"]
        await consumer.ack([r.id for r in batch])
        batch = await _next_batch(consumer)
        assert [r.id for r in batch] == second
        await consumer.ack(second)
        # Everything is acked: with a 1 s ack timeout, nothing comes back within 2.5 s.
        assert not await _receives_within(consumer, 2.5)


async def _receives_within(consumer: Consumer, seconds: float) -> bool:
    try:
        await _next_batch(consumer, seconds)
    except TimeoutError:
        return False
    return True


async def test_unacked_records_are_redelivered_after_the_ack_timeout(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    await client.create_subscription(f"{name}_sub", name, ack_timeout=1, offset="earliest")
    ids = await client.append(name, [Record(b"a"), Record(b"b"), Record(b"c")])

    async with client.subscribe(f"{name}_sub", "worker-1") as consumer:
        first = await _next_batch(consumer)
        assert [r.id for r in first] == ids
        await consumer.ack([ids[0], ids[2]])
        again = await _next_batch(consumer)  # after ~1 s, only the unacked index
        assert [r.id for r in again] == [ids[1]]
        assert again[0].payload == b"b"
        await consumer.ack([ids[1]])


async def test_latest_subscription_skips_records_stored_before_it(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    await client.append(name, [Record(b"old")])
    await client.create_subscription(f"{name}_sub", name, offset="latest")
    async with client.subscribe(f"{name}_sub", "w") as consumer:
        new = await client.append(name, [Record(b"new")])
        batch = await _next_batch(consumer)
        assert [r.payload for r in batch] == [b"new"]
        assert [r.id for r in batch] == new


async def test_shard_reader_reads_from_earliest_to_the_tail_and_stops(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    ids = []
    for i in range(5):
        ids += await client.append(name, [Record(b"%d-%d" % (i, j)) for j in range(3)])
    (shard,) = (await client.shard_map(name)).shard_ids
    async with client.read_shard(name, shard, offset="earliest", max_records=4) as reader:
        read = [r async for r in reader]
    assert [r.id for r in read] == ids


async def test_shard_reader_from_a_record_id_starts_at_that_record(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    ids = await client.append(name, [Record(b"%d" % i) for i in range(4)])
    ids += await client.append(name, [Record(b"x")])
    async with client.read_shard(name, ids[2].shard_id, offset=ids[2]) as reader:
        read = [r.id async for r in reader]
    assert read == ids[2:]


async def test_reader_limit_stops_early(client: HStreamClient, name: str) -> None:
    await client.create_stream(name, shard_count=2)
    await client.append(name, [Record(b"%d" % i, key=str(i)) for i in range(20)])
    async with client.read_stream(name, limit=7) as reader:
        assert len([r async for r in reader]) == 7


async def test_reading_an_empty_stream_ends_at_once(client: HStreamClient, name: str) -> None:
    await client.create_stream(name, shard_count=3)
    async with client.read_stream(name) as reader:
        assert [r async for r in reader] == []


async def test_follow_from_latest_sees_only_new_records(client: HStreamClient, name: str) -> None:
    await client.create_stream(name)
    await client.append(name, [Record(b"old")])
    (shard,) = (await client.shard_map(name)).shard_ids
    async with client.read_shard(
        name, shard, offset="latest", follow=True, poll_interval=0.05
    ) as reader:
        first = asyncio.ensure_future(anext(reader))
        new: list[RecordId] = await client.append(name, [Record(b"new")])
        record = await asyncio.wait_for(first, 10)
    assert (record.id, record.payload) == (new[0], b"new")


async def test_follow_over_a_stream_reads_new_records_from_every_shard(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name, shard_count=3)
    async with client.read_stream(
        name, offset="latest", follow=True, limit=30, poll_interval=0.05
    ) as reader:
        collected = asyncio.ensure_future(_collect(reader))
        ids = await client.append(name, [Record(b"%d" % i, key=f"k{i}") for i in range(30)])
        read = await asyncio.wait_for(collected, 10)
    assert len({i.shard_id for i in ids}) == 3
    assert sorted(str(r.id) for r in read) == sorted(str(i) for i in ids)


async def _collect(reader: StreamReader) -> list[ReceivedRecord]:
    return [r async for r in reader]
