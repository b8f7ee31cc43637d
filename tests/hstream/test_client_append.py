"""Appends through HStreamClient into a real embedded store, read back with a shard reader."""

import pytest

from bridge.hstream import Compression, HStreamClient, Record, RecordId, encode_raw, errors
from bridge.hstream.records import ReceivedRecord
from bridge.hstream.shards import ShardMap


async def _read_all(client: HStreamClient, stream: str) -> list[ReceivedRecord]:
    async with client.read_stream(stream) as reader:
        return [record async for record in reader]


async def test_raw_records_are_stored_with_key_attributes_and_ids_in_input_order(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    records = [Record(b"payload-%d" % i, key="k", attributes={"i": str(i)}) for i in range(5)]
    ids = await client.append(name, records)
    assert len(ids) == 5
    assert len({(i.shard_id, i.batch_id) for i in ids}) == 1  # one append, one batch
    assert [i.batch_index for i in ids] == [0, 1, 2, 3, 4]

    stored = await _read_all(client, name)
    assert [r.id for r in stored] == ids
    assert [r.payload for r in stored] == [b"payload-%d" % i for i in range(5)]
    assert all(r.key == "k" for r in stored)
    assert [r.attributes for r in stored] == [{"i": str(i)} for i in range(5)]
    assert all(r.publish_time > 0 for r in stored)


async def test_json_records_come_back_as_dicts(client: HStreamClient, name: str) -> None:
    await client.create_stream(name)
    await client.append(name, [Record({"temp": 21.5, "site": "a", "ok": True})])
    (stored,) = await _read_all(client, name)
    assert stored.is_json
    assert stored.payload == {"temp": 21.5, "site": "a", "ok": True}


@pytest.mark.parametrize("compression", list(Compression))
async def test_every_compression_round_trips(
    client: HStreamClient, name: str, compression: Compression
) -> None:
    await client.create_stream(name)
    payloads = [b"reading %d " % i * 20 for i in range(100)]
    ids = await client.append(name, [Record(p) for p in payloads], compression=compression)
    assert len(ids) == 100
    assert [r.payload for r in await _read_all(client, name)] == payloads


async def test_keyed_records_land_in_the_shard_their_md5_names_and_ids_follow_input_order(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name, shard_count=4)
    shard_map = await client.shard_map(name)
    keys = [f"device-{i}" for i in range(40)]
    assert len({shard_map.shard_for(k) for k in keys}) == 4  # the keys spread over every shard
    records = [Record(b"%d" % i, key=key) for i, key in enumerate(keys)]

    ids = await client.append(name, records)

    assert [rid.shard_id for rid in ids] == [shard_map.shard_for(k) for k in keys]
    stored = {r.id: r for r in await _read_all(client, name)}
    assert [stored[rid].payload for rid in ids] == [b"%d" % i for i in range(40)]
    assert [stored[rid].key for rid in ids] == keys
    # One append (one batch) per shard.
    assert len({(rid.shard_id, rid.batch_id) for rid in ids}) == 4


async def test_append_encoded_is_the_hot_path_for_pre_encoded_records(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name, shard_count=2)
    shard_map: ShardMap = await client.shard_map(name)
    shard = shard_map.shard_ids[1]
    encoded = [encode_raw(b"x" * 200, key="k") for _ in range(1000)]
    ids = await client.append_encoded(name, shard, encoded, Compression.ZSTD)
    assert ids[0] == RecordId(shard, ids[0].batch_id, 0)
    assert ids[-1] == RecordId(shard, ids[0].batch_id, 999)
    again = await client.append_encoded(name, shard, encoded[:10], Compression.NONE)
    assert again[0].batch_id > ids[0].batch_id


async def test_append_keeps_working_after_the_stream_is_deleted_and_recreated(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name, shard_count=2)
    await client.append(name, [Record(b"before", key="a")])
    old_shards = (await client.shard_map(name)).shard_ids

    # Another client deletes and recreates the stream: our cached shards are now stale.
    async with HStreamClient(f"hstream://{client.current_target}") as other:
        await other.delete_stream(name)
        await other.create_stream(name, shard_count=2)
        new_shards = (await other.shard_map(name)).shard_ids
    assert set(new_shards).isdisjoint(old_shards)

    ids = await client.append(name, [Record(b"after", key="a")])
    assert ids[0].shard_id in new_shards
    assert [r.payload for r in await _read_all(client, name)] == [b"after"]


async def test_append_encoded_to_a_stale_shard_drops_the_cache_and_raises_not_found(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    (old_shard,) = (await client.shard_map(name)).shard_ids
    async with HStreamClient(f"hstream://{client.current_target}") as other:
        await other.delete_stream(name)
        await other.create_stream(name)

    with pytest.raises(errors.NotFound) as caught:
        await client.append_encoded(name, old_shard, [encode_raw(b"x")], Compression.NONE)
    assert caught.value.retriable is False
    # The shard map was dropped, so the next lookup finds the new shard and the append works.
    (new_shard,) = (await client.shard_map(name)).shard_ids
    assert new_shard != old_shard
    assert len(await client.append_encoded(name, new_shard, [encode_raw(b"x")])) == 1


async def test_append_to_a_missing_stream_raises_stream_not_found(
    client: HStreamClient, name: str
) -> None:
    with pytest.raises(errors.StreamNotFound):
        await client.append(name, [Record(b"x")])


async def test_empty_batch_and_oversized_batch_are_refused_with_their_codes(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    (shard,) = (await client.shard_map(name)).shard_ids
    with pytest.raises(errors.EmptyBatch) as empty:
        await client.append_encoded(name, shard, [])
    assert (empty.value.code, empty.value.retriable) == (206, False)
    with pytest.raises(errors.RecordTooLarge) as large:
        await client.append(name, [Record(b"x" * (1 << 20) + b"y")])
    assert (large.value.code, large.value.retriable) == (207, False)
    assert await client.append(name, []) == []


async def test_invalidate_forgets_one_streams_caches_and_keeps_the_others(
    client: HStreamClient, name: str
) -> None:
    streams = [f"{name}_a", f"{name}_b"]
    for stream in streams:
        await client.create_stream(stream, shard_count=2)
        await client.append(stream, [Record(b"x", key=f"k{i}") for i in range(20)])
    caches = (client._shard_maps, client._shard_targets, client._stream_fields)
    assert all(set(cache) == set(streams) for cache in caches)
    assert len(client._shard_targets[streams[0]]) == 2

    client.invalidate(streams[0])
    assert all(set(cache) == {streams[1]} for cache in caches)
    # The next append looks the stream up again.
    assert len(await client.append(streams[0], [Record(b"y", key="k")])) == 1
    assert all(set(cache) == set(streams) for cache in caches)
