"""A store process killed with SIGKILL loses nothing it acknowledged."""

import asyncio
import time
from pathlib import Path
from typing import Any

import grpc
import hstreamdb

from bridge.hstream._api import SPECIAL_OFFSET_EARLIEST, HStreamApiStub, pb
from bridge.hstream.records import batched_record, decode_records, encode_raw
from tests.support.store import StoreProcess


def batch_of(tag: str, records: int = 10) -> Any:
    return batched_record([encode_raw(f"{tag}/{i}".encode() * 5) for i in range(records)])


async def stored_batches(stub: Any, stream: str) -> dict[tuple[int, int], list[bytes]]:
    """Every stored batch of a stream by (shard id, batch id), with its record payloads."""
    out: dict[tuple[int, int], list[bytes]] = {}
    shards = (await stub.ListShards(pb.ListShardsRequest(streamName=stream))).shards
    for shard in shards:
        reader = f"check-{shard.shardId}"
        offset = pb.ShardOffset(specialOffset=SPECIAL_OFFSET_EARLIEST)
        await stub.CreateShardReader(
            pb.CreateShardReaderRequest(
                streamName=stream, shardId=shard.shardId, shardOffset=offset, readerId=reader
            )
        )
        for _ in range(10_000):
            response = await stub.ReadShard(pb.ReadShardRequest(readerId=reader, maxRecords=1000))
            if not response.receivedRecords:
                break
            for received in response.receivedRecords:
                rid = received.recordIds[0]
                payloads = [r.payload for r in decode_records(received.record)]
                out[(rid.shardId, rid.batchId)] = payloads
        await stub.DeleteShardReader(pb.DeleteShardReaderRequest(readerId=reader))
    return out


async def test_sigkill_after_acknowledged_appends_loses_nothing(tmp_path: Path) -> None:
    process = StoreProcess(tmp_path / "data")
    await process.start()
    try:
        acked: dict[tuple[int, int], bytes] = {}
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = HStreamApiStub(channel)
            await stub.CreateStream(pb.Stream(streamName="k", replicationFactor=1, shardCount=2))
            shards = (await stub.ListShards(pb.ListShardsRequest(streamName="k"))).shards
            for n in range(200):
                batch = batch_of(f"b{n}")
                shard = shards[n % 2].shardId
                response = await stub.Append(
                    pb.AppendRequest(streamName="k", shardId=shard, records=batch)
                )
                rid = response.recordIds[0]
                acked[(rid.shardId, rid.batchId)] = batch.payload
        process.kill()
        await process.restart()
        async with grpc.aio.insecure_channel(process.address) as channel:
            stored = await stored_batches(HStreamApiStub(channel), "k")
        assert set(stored) == set(acked)
        for key, payload in acked.items():
            expected = [r.payload for r in decode_records(pb.BatchedRecord(payload=payload))]
            assert stored[key] == expected
    finally:
        process.kill()


async def test_sigkill_during_concurrent_appends_keeps_every_acknowledged_batch(
    tmp_path: Path,
) -> None:
    process = StoreProcess(tmp_path / "data")
    await process.start()
    acked: dict[tuple[int, int], str] = {}
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            stub = HStreamApiStub(channel)
            await stub.CreateStream(pb.Stream(streamName="c", replicationFactor=1, shardCount=3))
            shards = [
                s.shardId
                for s in (await stub.ListShards(pb.ListShardsRequest(streamName="c"))).shards
            ]
            enough = asyncio.Event()

            async def writer(w: int) -> None:
                deadline = time.monotonic() + 60
                for n in range(100_000):
                    if time.monotonic() > deadline:
                        return
                    tag = f"w{w}-{n}"
                    request = pb.AppendRequest(
                        streamName="c", shardId=shards[w % 3], records=batch_of(tag, 50)
                    )
                    try:
                        response = await stub.Append(request, timeout=10)
                    except grpc.aio.AioRpcError:
                        return  # the store is gone
                    rid = response.recordIds[0]
                    acked[(rid.shardId, rid.batchId)] = tag
                    if len(acked) >= 300:
                        enough.set()

            writers = [asyncio.create_task(writer(w)) for w in range(6)]
            await asyncio.wait_for(enough.wait(), 60)
            process.kill()  # appends are in flight right now
            await asyncio.wait_for(asyncio.gather(*writers), 30)
        await process.restart()
        async with grpc.aio.insecure_channel(process.address) as channel:
            stored = await stored_batches(HStreamApiStub(channel), "c")
        missing = set(acked) - set(stored)
        assert not missing, f"{len(missing)} acknowledged batches lost"
        for key, tag in acked.items():
            assert stored[key][0] == f"{tag}/0".encode() * 5
    finally:
        process.kill()


async def test_sigterm_stops_the_store_cleanly_and_data_survives(tmp_path: Path) -> None:
    process = StoreProcess(tmp_path / "data")
    await process.start()
    try:
        client = await hstreamdb.insecure_client(host=process.host, port=process.port)
        async with client:
            await client.create_stream("t")
            await client.append("t", [b"kept"])
        assert await process.terminate() == 0
        await process.start()
        client = await hstreamdb.insecure_client(host=process.host, port=process.port)
        async with client:
            assert [s.name for s in await client.list_streams()] == ["t"]
    finally:
        process.kill()
