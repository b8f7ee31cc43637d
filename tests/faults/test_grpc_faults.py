"""`FaultProxy` between `HStreamClient` and a real embedded store: forwarding and each fault."""

import asyncio
import itertools
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from bridge.hstream import HStreamClient, Record, errors
from bridge.hstream._api import RESOURCE_SHARD, HStreamApiStub, pb
from bridge.hstream.store import EmbeddedStore
from tests.support.bridge import read_stream
from tests.support.grpc_faults import FaultProxy

_names = itertools.count()


@pytest.fixture
def name() -> str:
    return f"f{os.getpid()}_{next(_names)}"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[EmbeddedStore]:
    async with EmbeddedStore(tmp_path / "store") as running:
        yield running


@pytest.fixture
async def proxy(store: EmbeddedStore) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(store.url) as running:
        yield running


@pytest.fixture
async def client(proxy: FaultProxy) -> AsyncIterator[HStreamClient]:
    async with HStreamClient(proxy.url, timeout=5.0) as connected:
        yield connected


async def test_calls_are_forwarded_and_counted(
    store: EmbeddedStore, proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        await client.create_stream(name, shard_count=2)
        records = [Record(f"m{i}".encode(), key=f"k{i}") for i in range(5)]
        ids = await client.append(name, records)

        read = await read_stream(proxy.url, name)
        assert {r.id: r.payload for r in read} == {
            rid: r.payload for rid, r in zip(ids, records, strict=True)
        }
        assert proxy.appended[name] == 5
        assert proxy.calls["Append"] >= 1
        assert proxy.calls["ReadShard"] >= 1
        assert proxy.calls["LookupShardReader"] >= 1
        assert not proxy.refused
        assert len(await read_stream(store.url, name)) == 5


async def test_lookups_name_the_proxy(
    store: EmbeddedStore, proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        assert [(n.host, n.port) for n in client.nodes] == [("127.0.0.1", proxy.port)]
        await client.create_stream(name)
        (shard,) = await client.list_shards(name)
        async with (
            grpc.aio.insecure_channel(proxy.address) as via_proxy,
            grpc.aio.insecure_channel(store.address) as direct,
        ):
            for channel, port in ((via_proxy, proxy.port), (direct, store.port)):
                stub = HStreamApiStub(channel)
                found = await stub.LookupShard(pb.LookupShardRequest(shardId=shard.shard_id))
                assert found.shardId == shard.shard_id
                assert found.serverNode.port == port
                request = pb.LookupResourceRequest(
                    resType=RESOURCE_SHARD, resId=str(shard.shard_id)
                )
                node = await stub.LookupResource(request)
                assert (node.host, node.port) == ("127.0.0.1", port)
        assert proxy.port != store.port


async def test_injected_internal_error_surfaces_as_internal_error(
    proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        proxy.fail("CreateStream", code=grpc.StatusCode.INTERNAL, error=0, message="boom", times=1)
        with pytest.raises(errors.InternalError) as caught:
            await client.create_stream(name)
        assert caught.value.code == 0
        assert caught.value.message == "boom"
        assert proxy.refused[("CreateStream", grpc.StatusCode.INTERNAL)] == 1
        assert (await client.create_stream(name)).name == name  # the rule has expired


async def test_resource_exhausted_twice_then_the_append_goes_through(
    store: EmbeddedStore, proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        await client.create_stream(name)
        await client.create_stream(f"{name}_other")
        code = grpc.StatusCode.RESOURCE_EXHAUSTED
        proxy.fail("Append", code=code, stream=name, times=2)

        await client.append(f"{name}_other", [Record(b"x")])  # another stream: not matched
        for _ in range(2):
            with pytest.raises(errors.HStreamError) as caught:
                await client.append(name, [Record(b"m")])
            assert caught.value.retriable  # the class follows bridge.hstream.errors
            cause = caught.value.__cause__
            assert isinstance(cause, grpc.aio.AioRpcError)
            assert cause.code() == code
        await client.append(name, [Record(b"m")])

        assert proxy.refused[("Append", code)] == 2
        assert proxy.appended == {name: 1, f"{name}_other": 1}
        assert [r.payload for r in await read_stream(store.url, name)] == [b"m"]


async def test_held_answer_is_stored_upstream_while_the_client_waits(
    store: EmbeddedStore, proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        await client.create_stream(name)
        hold = proxy.hold("Append", stream=name)
        append = asyncio.create_task(client.append(name, [Record(b"held")]))
        try:
            await hold.wait()
            stored = await read_stream(store.url, name)
            assert [r.payload for r in stored] == [b"held"]
            await asyncio.sleep(0.2)
            assert not append.done()
            assert hold.held == 1
            hold.release()
            assert await append == [stored[0].id]
            assert hold.held == 0
        finally:
            append.cancel()
        await client.append(name, [Record(b"after")])  # a released hold matches no more
        assert hold.caught == 1


async def test_hold_before_forwarding_keeps_the_request_from_the_store(
    store: EmbeddedStore, proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        await client.create_stream(name)
        hold = proxy.hold("Append", before=True)
        append = asyncio.create_task(client.append(name, [Record(b"late")]))
        try:
            await hold.wait()
            await asyncio.sleep(0.2)
            assert await read_stream(store.url, name) == []
            assert proxy.appended[name] == 0
            hold.release()
            await append
        finally:
            append.cancel()
        assert [r.payload for r in await read_stream(store.url, name)] == [b"late"]


async def test_delay_slows_matching_calls(proxy: FaultProxy, client: HStreamClient) -> None:
    async with asyncio.timeout(20):
        proxy.delay("Echo", 0.3, times=1)
        started = time.monotonic()
        assert await client.echo("slow") == "slow"
        assert time.monotonic() - started >= 0.3
        started = time.monotonic()
        await client.echo("fast")
        assert time.monotonic() - started < 0.3


async def test_cut_fails_calls_in_flight_and_new_ones_until_restore(
    store: EmbeddedStore, proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(30):
        await client.create_stream(name)
        hold = proxy.hold("Append", before=True)
        in_flight = asyncio.create_task(client.append(name, [Record(b"lost")]))
        try:
            await hold.wait()
            await proxy.cut()
            with pytest.raises(errors.HStreamUnavailable):
                await in_flight
        finally:
            in_flight.cancel()
        proxy.clear()
        assert proxy.is_cut
        with pytest.raises(errors.HStreamUnavailable):
            await client.append(name, [Record(b"refused")])
        assert not await client.ping()
        unavailable = grpc.StatusCode.UNAVAILABLE
        assert proxy.refused[("Append", unavailable)] == 1  # the in-flight one
        assert proxy.refused[("ListShards", unavailable)] == 1  # the client had invalidated
        assert proxy.refused[("Echo", unavailable)] == 1
        assert proxy.appended[name] == 0

        proxy.restore()
        ids = await client.append(name, [Record(b"back")])
        assert [r.id for r in await read_stream(store.url, name)] == ids


async def test_streaming_fetch_is_forwarded_and_cut(
    proxy: FaultProxy, client: HStreamClient, name: str
) -> None:
    async with asyncio.timeout(20):
        await client.create_stream(name)
        await client.append(name, [Record(b"a"), Record(b"b")])
        await client.create_subscription(f"{name}_sub", name)
        async with client.subscribe(f"{name}_sub", "c1") as consumer:
            batch = await anext(consumer)
            assert [r.payload for r in batch] == [b"a", b"b"]
            await consumer.ack([r.id for r in batch])
            await proxy.cut()  # a call in flight: the stream ends with UNAVAILABLE
            with pytest.raises(errors.HStreamUnavailable):
                await anext(consumer)
        assert proxy.refused[("StreamingFetch", grpc.StatusCode.UNAVAILABLE)] == 1


async def test_messages_over_grpc_default_4_mib_pass(tmp_path: Path, name: str) -> None:
    async with (
        asyncio.timeout(30),
        EmbeddedStore(tmp_path / "big", max_record_bytes=8 << 20) as store,
        FaultProxy(store.url) as proxy,
        HStreamClient(proxy.url) as client,
    ):
        await client.create_stream(name)
        records = [Record(bytes([i]) * 900_000) for i in range(6)]  # a 5.4 MB request
        await client.append(name, records)
        assert proxy.appended[name] == 6
        read = await read_stream(proxy.url, name)  # a 5.4 MB answer
        assert [r.payload for r in read] == [r.payload for r in records]


def test_rules_reject_unknown_methods_and_stream_filters_that_cannot_match() -> None:
    proxy = FaultProxy("hstream://127.0.0.1:6570")
    with pytest.raises(ValueError, match="no method"):
        proxy.fail("Apend", code=grpc.StatusCode.INTERNAL)
    with pytest.raises(ValueError, match="name no stream"):
        proxy.delay("LookupShard", 1.0, stream="s")
    with pytest.raises(ValueError, match="name no stream"):
        proxy.hold("StreamingFetch", stream="s")


async def test_client_metadata_reaches_the_store(tmp_path: Path, name: str) -> None:
    async with (
        asyncio.timeout(20),
        EmbeddedStore(tmp_path / "auth", username="u", password="p") as store,
        FaultProxy(store.url) as proxy,
    ):
        async with HStreamClient(f"hstream://u:p@{proxy.address}") as client:
            assert (await client.create_stream(name)).name == name
        with pytest.raises(errors.HStreamError):
            async with HStreamClient(proxy.url) as anonymous:
                await anonymous.create_stream(f"{name}_x")
        assert proxy.refused[("DescribeCluster", grpc.StatusCode.UNAUTHENTICATED)] == 1
