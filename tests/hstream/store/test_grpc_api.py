"""The store through raw gRPC calls: what the official client does not reach."""

import asyncio
import base64
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import empty_pb2

from bridge.hstream import errors
from bridge.hstream._api import (
    COMPRESSION_ZSTD,
    RESOURCE_SHARD,
    SPECIAL_OFFSET_EARLIEST,
    SPECIAL_OFFSET_LATEST,
    HStreamApiStub,
    pb,
)
from bridge.hstream.records import Compression, batched_record, decode_records, encode_raw
from bridge.hstream.shards import split_key_space
from bridge.hstream.store import EmbeddedStore
from bridge.hstream.store.engine import Engine, StreamMeta
from tests.support.store import FetchSession, inprocess_store


async def make_stream(stub: Any, name: str, shards: int = 1) -> list[int]:
    await stub.CreateStream(pb.Stream(streamName=name, replicationFactor=1, shardCount=shards))
    response = await stub.ListShards(pb.ListShardsRequest(streamName=name))
    return [s.shardId for s in response.shards]


async def append(
    stub: Any,
    stream: str,
    shard_id: int,
    payloads: list[bytes],
    compression: Compression = Compression.NONE,
) -> list[Any]:
    batch = batched_record([encode_raw(p) for p in payloads], compression)
    response = await stub.Append(
        pb.AppendRequest(streamName=stream, shardId=shard_id, records=batch)
    )
    return list(response.recordIds)


def payloads_of(received: Any) -> list[bytes]:
    return [r.payload for r in decode_records(received.record)]


async def subscribe(
    stub: Any, sub: str, stream: str, ack_timeout: int = 60, max_unacked: int = 1000
) -> None:
    await stub.CreateSubscription(
        pb.Subscription(
            subscriptionId=sub,
            streamName=stream,
            ackTimeoutSeconds=ack_timeout,
            maxUnackedRecords=max_unacked,
            offset=SPECIAL_OFFSET_EARLIEST,
        )
    )


async def read_all(stub: Any, stream: str, shard_id: int, reader: str) -> list[Any]:
    offset = pb.ShardOffset(specialOffset=SPECIAL_OFFSET_EARLIEST)
    await stub.CreateShardReader(
        pb.CreateShardReaderRequest(
            streamName=stream, shardId=shard_id, shardOffset=offset, readerId=reader
        )
    )
    out: list[Any] = []
    for _ in range(1000):
        response = await stub.ReadShard(pb.ReadShardRequest(readerId=reader, maxRecords=1000))
        if not response.receivedRecords:
            break
        out.extend(response.receivedRecords)
    await stub.DeleteShardReader(pb.DeleteShardReaderRequest(readerId=reader))
    return out


def status_error(exc: grpc.aio.AioRpcError) -> errors.HStreamError:
    return errors.from_status(exc.code(), exc.details())


async def test_describe_cluster_names_the_advertised_address(
    stub: Any, store: EmbeddedStore
) -> None:
    response = await stub.DescribeCluster(empty_pb2.Empty())
    (node,) = response.serverNodes
    assert (node.host, node.port) == (store.host, store.port)
    assert response.serverNodesStatus[0].state == pb.NodeState.Value("Running")
    assert response.protocolVersion


async def test_lookups_echo_the_requested_id_and_answer_the_store(
    stub: Any, store: EmbeddedStore
) -> None:
    shard = await stub.LookupShard(pb.LookupShardRequest(shardId=987654321))
    assert shard.shardId == 987654321
    sub = await stub.LookupSubscription(pb.LookupSubscriptionRequest(subscriptionId="any-sub"))
    assert sub.subscriptionId == "any-sub"
    reader = await stub.LookupShardReader(pb.LookupShardReaderRequest(readerId="any-reader"))
    assert reader.readerId == "any-reader"
    resource = await stub.LookupResource(
        pb.LookupResourceRequest(resType=RESOURCE_SHARD, resId="42")
    )
    key = await stub.LookupKey(pb.LookupKeyRequest(partitionKey="k"))
    for node in (shard.serverNode, sub.serverNode, reader.serverNode, resource, key):
        assert (node.host, node.port) == (store.host, store.port)


async def test_list_shards_splits_the_key_space_exactly(stub: Any) -> None:
    await make_stream(stub, "split", shards=5)
    response = await stub.ListShards(pb.ListShardsRequest(streamName="split"))
    ranges = [(int(s.startHashRangeKey), int(s.endHashRangeKey)) for s in response.shards]
    assert ranges == split_key_space(5)
    assert all(s.isActive and s.streamName == "split" for s in response.shards)


async def test_recreated_stream_gets_new_shard_ids(stub: Any) -> None:
    first = await make_stream(stub, "again", shards=2)
    await stub.DeleteStream(pb.DeleteStreamRequest(streamName="again"))
    second = await make_stream(stub, "again", shards=2)
    other = await make_stream(stub, "other", shards=2)
    assert len(set(first) | set(second) | set(other)) == 6


async def test_append_answers_one_record_id_per_record(stub: Any) -> None:
    (shard,) = await make_stream(stub, "ids")
    ids = await append(stub, "ids", shard, [b"x"] * 300)
    assert [(i.shardId, i.batchId, i.batchIndex) for i in ids] == [
        (shard, 1, n) for n in range(300)
    ]
    again = await append(stub, "ids", shard, [b"y"])
    assert [(i.shardId, i.batchId, i.batchIndex) for i in again] == [(shard, 2, 0)]


async def test_zstd_batch_is_stored_and_returned_byte_for_byte(stub: Any) -> None:
    (shard,) = await make_stream(stub, "zstd")
    batch = batched_record([encode_raw(b"z" * 500) for _ in range(10)], Compression.ZSTD)
    await stub.Append(pb.AppendRequest(streamName="zstd", shardId=shard, records=batch))
    (read,) = await read_all(stub, "zstd", shard, "zr")
    assert read.record.compressionType == COMPRESSION_ZSTD
    assert read.record.payload == batch.payload
    assert len(read.recordIds) == 10
    await subscribe(stub, "zsub", "zstd")
    async with FetchSession(stub, "zsub", "c") as fetch:
        received = await fetch.next()
    assert received.record.payload == batch.payload


async def test_append_errors(tmp_path: Path) -> None:
    limited = inprocess_store(tmp_path / "d", max_record_bytes=1000)
    async with limited as store, grpc.aio.insecure_channel(store.address) as channel:
        stub = HStreamApiStub(channel)
        (shard,) = await make_stream(stub, "limits")
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await append(stub, "limits", shard, [b"x" * 1001])
        assert status_error(info.value).code == 207
        assert len(await append(stub, "limits", shard, [b"x" * 900])) == 1
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.Append(
                pb.AppendRequest(streamName="limits", shardId=shard, records=pb.BatchedRecord())
            )
        assert status_error(info.value).code == 206
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await append(stub, "nostream", shard, [b"x"])
        assert status_error(info.value).code == 200
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await append(stub, "limits", shard + 1000, [b"x"])
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
        assert isinstance(status_error(info.value), errors.NotFound)


async def test_get_tail_record_id_follows_appends(stub: Any) -> None:
    (shard,) = await make_stream(stub, "tail")
    request = pb.GetTailRecordIdRequest(streamName="tail", shardId=shard)
    assert (await stub.GetTailRecordId(request)).tailRecordId.batchId == 0
    for _ in range(3):
        await append(stub, "tail", shard, [b"a", b"b"])
    tail = (await stub.GetTailRecordId(request)).tailRecordId
    assert (tail.shardId, tail.batchId) == (shard, 3)


async def test_trim_shard_drops_batches_up_to_the_trim_point(stub: Any) -> None:
    (shard,) = await make_stream(stub, "trim")
    ids = [(await append(stub, "trim", shard, [f"b{i}".encode()]))[0] for i in range(5)]
    point = pb.ShardOffset(recordOffset=ids[2])
    await stub.TrimShard(pb.TrimShardRequest(streamName="trim", shardId=shard, trimPoint=point))
    left = await read_all(stub, "trim", shard, "tr")
    assert [payloads_of(r) for r in left] == [[b"b3"], [b"b4"]]
    tail = await stub.GetTailRecordId(pb.GetTailRecordIdRequest(streamName="trim", shardId=shard))
    assert tail.tailRecordId.batchId == 5


async def test_trimmed_shard_keeps_its_batch_ids_across_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    async with inprocess_store(data) as store, grpc.aio.insecure_channel(store.address) as ch:
        stub = HStreamApiStub(ch)
        (shard,) = await make_stream(stub, "kept")
        for _ in range(3):
            await append(stub, "kept", shard, [b"x"])
        await stub.TrimStream(
            pb.TrimStreamRequest(
                streamName="kept", trimPoint=pb.StreamOffset(specialOffset=SPECIAL_OFFSET_LATEST)
            )
        )
        assert await read_all(stub, "kept", shard, "k1") == []
    async with inprocess_store(data) as store, grpc.aio.insecure_channel(store.address) as ch:
        stub = HStreamApiStub(ch)
        (rid,) = await append(stub, "kept", shard, [b"y"])
        assert rid.batchId == 4


async def test_reader_from_latest_sees_only_new_batches_and_waits_for_them(stub: Any) -> None:
    (shard,) = await make_stream(stub, "live")
    await append(stub, "live", shard, [b"old"])
    await stub.CreateShardReader(
        pb.CreateShardReaderRequest(
            streamName="live",
            shardId=shard,
            shardOffset=pb.ShardOffset(specialOffset=SPECIAL_OFFSET_LATEST),
            readerId="lr",
            timeout=5000,
        )
    )
    assert list((await stub.ListShardReaders(pb.ListShardReadersRequest())).readerId) == ["lr"]
    pending = asyncio.ensure_future(
        stub.ReadShard(pb.ReadShardRequest(readerId="lr", maxRecords=10))
    )
    await append(stub, "live", shard, [b"new"])
    response = await asyncio.wait_for(pending, 10)
    assert [payloads_of(r) for r in response.receivedRecords] == [[b"new"]]
    await stub.DeleteShardReader(pb.DeleteShardReaderRequest(readerId="lr"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ReadShard(pb.ReadShardRequest(readerId="lr", maxRecords=10))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_read_shard_stream_sends_batches_until_the_limit(stub: Any) -> None:
    (shard,) = await make_stream(stub, "rss")
    for i in range(4):
        await append(stub, "rss", shard, [f"m{i}".encode()])
    request = pb.ReadShardStreamRequest(
        readerId="s",
        shardId=shard,
        maxReadBatches=3,
        **{"from": pb.ShardOffset(specialOffset=SPECIAL_OFFSET_EARLIEST)},
    )
    got = [payloads_of(r.receivedRecords[0]) async for r in stub.ReadShardStream(request)]
    assert got == [[b"m0"], [b"m1"], [b"m2"]]


async def test_sending_pauses_at_max_unacked_records_and_resumes_on_ack(stub: Any) -> None:
    (shard,) = await make_stream(stub, "flow")
    await subscribe(stub, "flow-sub", "flow", max_unacked=3)
    for i in range(4):
        await append(stub, "flow", shard, [f"{i}a".encode(), f"{i}b".encode()])
    async with FetchSession(stub, "flow-sub", "c") as fetch:
        first = await fetch.next()
        second = await fetch.next()  # 2 unacked < 3: one more batch goes out, then 4 >= 3
        assert [payloads_of(first), payloads_of(second)] == [[b"0a", b"0b"], [b"1a", b"1b"]]
        with pytest.raises(TimeoutError):
            await fetch.next(timeout=0.5)
        fetch.ack(first.recordIds)
        third = await fetch.next()
        assert payloads_of(third) == [b"2a", b"2b"]


async def test_new_appends_reach_a_live_consumer_promptly(stub: Any) -> None:
    (shard,) = await make_stream(stub, "push")
    await subscribe(stub, "push-sub", "push")
    async with FetchSession(stub, "push-sub", "c") as fetch:
        for i in range(20):
            await append(stub, "push", shard, [f"{i}".encode()])
            received = await fetch.next(timeout=2)
            assert payloads_of(received) == [f"{i}".encode()]
            fetch.ack(received.recordIds)


async def test_shards_are_split_between_consumers_and_move_when_one_leaves(
    stub: Any,
) -> None:
    shards = await make_stream(stub, "shared", shards=2)
    await subscribe(stub, "shared-sub", "shared")
    a = FetchSession(stub, "shared-sub", "a")
    b = FetchSession(stub, "shared-sub", "b")
    try:
        await append(stub, "shared", shards[0], [b"s0"])
        await append(stub, "shared", shards[1], [b"s1"])
        got_a, got_b = await a.next(), await b.next()
        assert {got_a.recordIds[0].shardId, got_b.recordIds[0].shardId} == set(shards)
        consumers = await stub.ListConsumers(pb.ListConsumersRequest(subscriptionId="shared-sub"))
        assert sorted(c.name for c in consumers.consumers) == ["a", "b"]
        b.ack(got_b.recordIds)
        a.cancel()  # a leaves without acking: b gets a's shard and its unacked batch
        moved = await b.next()
        assert moved.recordIds[0].shardId == got_a.recordIds[0].shardId
        assert payloads_of(moved) == payloads_of(got_a)
    finally:
        a.cancel()
        b.cancel()


async def test_acked_progress_survives_a_restart(tmp_path: Path) -> None:
    data = tmp_path / "d"
    async with inprocess_store(data) as store, grpc.aio.insecure_channel(store.address) as ch:
        stub = HStreamApiStub(ch)
        (shard,) = await make_stream(stub, "durable")
        await subscribe(stub, "durable-sub", "durable")
        for i in range(3):
            await append(stub, "durable", shard, [f"{i}a".encode(), f"{i}b".encode()])
        async with FetchSession(stub, "durable-sub", "c") as fetch:
            first, second = await fetch.next(), await fetch.next()
            fetch.ack([*first.recordIds, second.recordIds[0]])
            await fetch.finish()
    async with inprocess_store(data) as store, grpc.aio.insecure_channel(store.address) as ch:
        stub = HStreamApiStub(ch)
        info = await stub.GetSubscription(pb.GetSubscriptionRequest(id="durable-sub"))
        assert [(o.shardId, o.batchId) for o in info.offsets] == [(shard, 1)]
        async with FetchSession(stub, "durable-sub", "c") as fetch:
            again = await fetch.next()
            assert payloads_of(again) == [b"1b"]
            assert [i.batchIndex for i in again.recordIds] == [1]
            assert payloads_of(await fetch.next()) == [b"2a", b"2b"]


async def test_unimplemented_rpcs_answer_unimplemented(stub: Any) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ExecuteQuery(pb.CommandQuery())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stub.ListViews(pb.ListViewsRequest())
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_basic_auth_refuses_calls_without_the_right_credentials(tmp_path: Path) -> None:
    secured = inprocess_store(tmp_path / "d", username="u", password="p")
    async with secured as store, grpc.aio.insecure_channel(store.address) as channel:
        stub = HStreamApiStub(channel)
        good = (("authorization", "Basic " + base64.b64encode(b"u:p").decode()),)
        bad = (("authorization", "Basic " + base64.b64encode(b"u:x").decode()),)
        assert (await stub.Echo(pb.EchoRequest(msg="hi"), metadata=good)).msg == "hi"
        for metadata in (bad, ()):
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await stub.Echo(pb.EchoRequest(msg="hi"), metadata=metadata)
            assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        call = stub.StreamingFetch(iter([pb.StreamingFetchRequest(subscriptionId="x")]))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call.read()
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_concurrent_appends_share_one_commit(tmp_path: Path) -> None:
    engine = Engine(tmp_path)
    await engine.open()
    try:
        await engine.create_stream(StreamMeta("g", 1, 0, 1, 0), split_key_space(1))
        (shard,) = engine.shards
        before = engine.commits
        ids = await asyncio.gather(*(engine.append(shard, 0, 1, b"p") for _ in range(50)))
        assert sorted(batch_id for batch_id, _ in ids) == list(range(1, 51))
        assert engine.commits - before <= 2
    finally:
        await engine.close()
