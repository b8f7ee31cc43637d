"""The official Python client (`hstreamdb` 0.5.0), unmodified, against the embedded store."""

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import hstreamdb
import pytest

from bridge.hstream import errors
from bridge.hstream.shards import split_key_space
from bridge.hstream.store import EmbeddedStore

EARLIEST = hstreamdb.ShardOffset(specialOffset=hstreamdb.SpecialOffset.EARLIEST)


async def read_shard(client: Any, stream: str, shard_id: int, reader_id: str) -> list[Any]:
    """Every record of a shard, through the client's shard reader."""
    out: list[Any] = []
    async with client.with_reader(stream, reader_id, EARLIEST, 100, shard_id=shard_id) as reader:
        for _ in range(1000):
            batch = list(await reader.read(1000))
            if not batch:
                return out
            out.extend(batch)
    raise AssertionError("reader did not reach the end")


async def expect_error(
    call: Awaitable[Any], cls: type[errors.HStreamError], code: int | None
) -> errors.HStreamError:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    assert info.value.code() != grpc.StatusCode.UNAVAILABLE
    error = errors.from_status(info.value.code(), info.value.details())
    assert isinstance(error, cls), error
    assert error.code == code
    return error


async def test_stream_create_list_delete_round_trip(client: Any) -> None:
    await client.create_stream("alpha", replication_factor=1, shard_count=2)
    await client.create_stream("beta")
    names = sorted(s.name for s in await client.list_streams())
    assert names == ["alpha", "beta"]
    await client.delete_stream("alpha")
    assert [s.name for s in await client.list_streams()] == ["beta"]
    await client.delete_stream("alpha", ignore_non_exist=True)


async def test_append_raw_json_and_text_reads_back_in_order(client: Any) -> None:
    await client.create_stream("mixed")
    ids = list(await client.append("mixed", [b"raw", {"temp": 21.5}, "text"]))
    assert [i.batch_index for i in ids] == [0, 1, 2]
    assert len({(i.shard_id, i.batch_id) for i in ids}) == 1
    records = await read_shard(client, "mixed", ids[0].shard_id, "r-mixed")
    assert [r.payload for r in records] == [b"raw", {"temp": 21.5}, b"text"]
    assert [r.id for r in records] == ids


async def test_gzip_batch_is_stored_and_read_back(client: Any) -> None:
    await client.create_stream("zipped")
    payloads = [bytes([i]) * 300 for i in range(1, 20)]
    ids = list(await client.append("zipped", payloads, compresstype="gzip"))
    records = await read_shard(client, "zipped", ids[0].shard_id, "r-zipped")
    assert [r.payload for r in records] == payloads


async def test_keyed_records_land_in_the_shard_md5_selects(client: Any) -> None:
    await client.create_stream("keyed", shard_count=4)
    shards = sorted(await client.list_shards("keyed"), key=lambda s: s.start)
    assert [(s.start, s.end) for s in shards] == split_key_space(4)
    keys = [f"device-{i}" for i in range(24)]
    landed: dict[str, int] = {}
    for key in keys:
        (rid,) = list(await client.append("keyed", [key.encode()], key=key))
        landed[key] = rid.shard_id
    for key in keys:
        position = int(hashlib.md5(key.encode()).hexdigest(), 16)
        owner = next(s for s in shards if s.start <= position <= s.end)
        assert landed[key] == owner.id, key
    assert len(set(landed.values())) > 1
    for shard in shards:
        records = await read_shard(client, "keyed", shard.id, f"r-keyed-{shard.id}")
        assert sorted(r.header.key for r in records) == sorted(
            k for k, sid in landed.items() if sid == shard.id
        )


async def test_buffered_producer_stores_every_record(client: Any) -> None:
    await client.create_stream("produced", shard_count=2)
    done: list[int] = []

    class Callback(hstreamdb.BufferedProducer.AppendCallback):  # type: ignore[misc]
        def on_success(self, stream_name: str, payloads: list[Any], stream_keyid: int) -> None:
            done.append(len(payloads))

        def on_fail(
            self, stream_name: str, payloads: list[Any], stream_keyid: int, e: Exception
        ) -> None:
            raise AssertionError(f"append failed: {e!r}")

    producer = client.new_producer(
        append_callback=Callback(), size_trigger=2000, time_trigger=0.05, workers=2
    )
    for i in range(300):
        await producer.append("produced", f"record-{i}".encode(), key=f"k{i % 7}")
    await producer.wait_and_close()
    assert sum(done) == 300
    stored: list[bytes] = []
    for shard in await client.list_shards("produced"):
        stored += [r.payload for r in await read_shard(client, "produced", shard.id, "r-prod")]
    assert sorted(stored) == sorted(f"record-{i}".encode() for i in range(300))


Processor = Callable[[Any, Any, Any], Awaitable[None]]


async def test_consumer_gets_unacked_records_again_after_ack_timeout(client: Any) -> None:
    await client.create_stream("orders")
    await client.create_subscription(
        "orders-sub", "orders", ack_timeout=1, offset=hstreamdb.SpecialOffset.EARLIEST
    )
    await client.append("orders", [b"one", b"two", b"three"])
    deliveries: asyncio.Queue[list[Any]] = asyncio.Queue()
    acks_to_send: list[int] = [1, 2]  # first delivery: ack one record; second: the rest

    async def process(ack: Any, stop: Any, records: Any) -> None:
        batch = list(records)
        await deliveries.put(batch)
        take = acks_to_send.pop(0) if acks_to_send else len(batch)
        await ack([r.id for r in batch[:take]])

    consumer = client.new_consumer("worker-1", "orders-sub", process)
    task = asyncio.create_task(consumer.start())
    try:
        first = await asyncio.wait_for(deliveries.get(), 10)
        assert [r.payload for r in first] == [b"one", b"two", b"three"]
        second = await asyncio.wait_for(deliveries.get(), 10)  # after the 1 s ack timeout
        assert [r.payload for r in second] == [b"two", b"three"]
        assert [r.id.batch_index for r in second] == [1, 2]
        await client.append("orders", [b"four"])
        third = await asyncio.wait_for(deliveries.get(), 10)
        assert [r.payload for r in third] == [b"four"]
    finally:
        await consumer._stop()
        await asyncio.wait_for(task, 10)


async def test_shard_reader_starts_at_a_record_offset(client: Any) -> None:
    await client.create_stream("readable")
    first = list(await client.append("readable", [b"a", b"b"]))
    second = list(await client.append("readable", [b"c"]))
    offset = hstreamdb.ShardOffset(recordOffset=hstreamdb.types.record_id_to(second[0]))
    async with client.with_reader(
        "readable", "r-off", offset, 100, shard_id=first[0].shard_id
    ) as r:
        assert [x.payload for x in await r.read(10)] == [b"c"]


async def test_stream_errors_carry_hstream_codes(client: Any) -> None:
    await expect_error(client.create_stream("1-bad"), errors.InvalidName, 204)
    await expect_error(
        client.create_stream("norep", replication_factor=0), errors.InvalidReplicationFactor, 203
    )
    await expect_error(
        client.create_stream("noshards", shard_count=0), errors.InvalidShardCount, 205
    )
    await client.create_stream("taken")
    await expect_error(client.create_stream("taken"), errors.StreamExists, 201)
    await expect_error(client.delete_stream("missing"), errors.StreamNotFound, 200)
    await expect_error(client.append("missing", [b"x"]), errors.StreamNotFound, 200)
    await expect_error(client.append("taken", []), errors.EmptyBatch, 206)
    await expect_error(client.append("taken", [b"x" * (1 << 20)]), errors.RecordTooLarge, 207)


async def test_subscription_errors_carry_hstream_codes(client: Any) -> None:
    await client.create_stream("subbed")
    await expect_error(
        client.create_subscription("s-missing", "missing"), errors.SubscriptionOnMissingStream, 302
    )
    await expect_error(client.create_subscription("9bad", "subbed"), errors.InvalidName, 304)
    await client.create_subscription("watch", "subbed")
    assert await client.does_subscription_exist("watch")
    assert [s.subscription_id for s in await client.list_subscriptions()] == ["watch"]
    await expect_error(
        client.create_subscription("watch", "subbed"), errors.SubscriptionExists, 301
    )
    await expect_error(client.delete_stream("subbed"), errors.StreamHasSubscriptions, 202)
    await expect_error(client.delete_subscription("nope"), errors.SubscriptionNotFound, 300)

    started = asyncio.Event()

    async def process(ack: Any, stop: Any, records: Any) -> None:
        started.set()

    consumer = client.new_consumer("holder", "watch", process)
    task = asyncio.create_task(consumer.start())
    try:
        await client.append("subbed", [b"x"])
        await asyncio.wait_for(started.wait(), 10)
        await expect_error(
            client.delete_subscription("watch"), errors.SubscriptionHasConsumers, 305
        )
        await client.delete_subscription("watch", force=True)
        # The consumer's stream ends with "subscription not found".
        await expect_error(asyncio.wait_for(task, 10), errors.SubscriptionNotFound, 300)
    finally:
        await consumer._stop()
        task.cancel()
    assert not await client.does_subscription_exist("watch")
    await client.delete_stream("subbed")


async def test_force_delete_removes_a_stream_with_subscriptions(
    client: Any, store: EmbeddedStore
) -> None:
    await client.create_stream("doomed")
    await client.create_subscription("doomed-sub", "doomed")
    await client.delete_stream("doomed", force=True)
    assert list(await client.list_streams()) == []
    assert not await client.does_subscription_exist("doomed-sub")
