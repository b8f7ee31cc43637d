"""Streams and subscriptions CRUD through HStreamClient against a real embedded store, and the
error class (with code and `retriable`) each refusal becomes."""

from collections.abc import Awaitable, Callable

import pytest

from bridge.hstream import HStreamClient, ShardInfo, StreamInfo, SubscriptionInfo, errors
from bridge.hstream.shards import KEY_SPACE_MAX, split_key_space


async def test_create_get_list_delete_stream_round_trip(client: HStreamClient, name: str) -> None:
    created = await client.create_stream(name, shard_count=3, backlog_seconds=3600)
    assert isinstance(created, StreamInfo)
    assert (created.name, created.shard_count, created.replication_factor) == (name, 3, 1)
    assert created.backlog_seconds == 3600

    fetched = await client.get_stream(name)
    assert (fetched.name, fetched.shard_count) == (name, 3)
    assert name in [s.name for s in await client.list_streams()]

    await client.delete_stream(name)
    assert name not in [s.name for s in await client.list_streams()]
    await client.delete_stream(name, ignore_missing=True)


async def test_list_shards_covers_the_key_space_like_the_official_clients(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name, shard_count=4)
    shards = await client.list_shards(name)
    assert all(isinstance(s, ShardInfo) and s.is_active and s.stream == name for s in shards)
    assert [(s.start_key, s.end_key) for s in shards] == split_key_space(4)
    assert shards[-1].end_key == KEY_SPACE_MAX
    shard_map = await client.shard_map(name)
    assert shard_map.shard_ids == [s.shard_id for s in shards]


async def test_subscription_create_get_list_delete(client: HStreamClient, name: str) -> None:
    await client.create_stream(name)
    sub = await client.create_subscription(
        f"{name}_sub", name, ack_timeout=5, max_unacked=100, offset="latest"
    )
    assert isinstance(sub, SubscriptionInfo)
    assert (sub.id, sub.stream, sub.ack_timeout, sub.max_unacked, sub.offset) == (
        f"{name}_sub",
        name,
        5.0,
        100,
        "latest",
    )
    assert (await client.get_subscription(f"{name}_sub")).stream == name
    assert f"{name}_sub" in [s.id for s in await client.list_subscriptions()]
    await client.delete_subscription(f"{name}_sub")
    assert f"{name}_sub" not in [s.id for s in await client.list_subscriptions()]


async def test_echo_and_ping_answer_for_readiness_checks(client: HStreamClient) -> None:
    assert await client.echo("hello") == "hello"
    assert await client.ping() is True


async def test_describe_cluster_names_the_store_node(client: HStreamClient) -> None:
    nodes = await client.describe_cluster()
    assert [node.target for node in nodes] == [client.current_target]


ERROR_CASES = [
    ("missing stream", errors.StreamNotFound, 200),
    ("duplicate stream", errors.StreamExists, 201),
    ("stream with subscriptions", errors.StreamHasSubscriptions, 202),
    ("replication factor 0", errors.InvalidReplicationFactor, 203),
    ("bad stream name", errors.InvalidName, 204),
    ("shard count 0", errors.InvalidShardCount, 205),
    ("missing subscription", errors.SubscriptionNotFound, 300),
    ("duplicate subscription", errors.SubscriptionExists, 301),
    ("subscription on missing stream", errors.SubscriptionOnMissingStream, 302),
    ("bad subscription name", errors.InvalidName, 304),
]


@pytest.mark.parametrize(
    ("case", "error_class", "code"), ERROR_CASES, ids=[case[0] for case in ERROR_CASES]
)
async def test_each_refusal_maps_to_its_error_class_code_and_retriable_flag(
    client: HStreamClient, name: str, case: str, error_class: type[errors.HStreamError], code: int
) -> None:
    await client.create_stream(name)
    await client.create_subscription(f"{name}_sub", name)
    attempts: dict[str, Callable[[], Awaitable[object]]] = {
        "missing stream": lambda: client.get_stream(f"{name}_missing"),
        "duplicate stream": lambda: client.create_stream(name),
        "stream with subscriptions": lambda: client.delete_stream(name),
        "replication factor 0": lambda: client.create_stream(f"{name}_r", replication_factor=0),
        "bad stream name": lambda: client.create_stream("9starts-with-digit"),
        "shard count 0": lambda: client.create_stream(f"{name}_s", shard_count=0),
        "missing subscription": lambda: client.get_subscription(f"{name}_nosub"),
        "duplicate subscription": lambda: client.create_subscription(f"{name}_sub", name),
        "subscription on missing stream": lambda: client.create_subscription(
            f"{name}_sub2", f"{name}_missing"
        ),
        "bad subscription name": lambda: client.create_subscription("bad/name", name),
    }
    with pytest.raises(error_class) as caught:
        await attempts[case]()
    assert type(caught.value) is error_class
    assert caught.value.code == code
    assert caught.value.retriable is False
    assert isinstance(caught.value.__cause__, Exception)  # the gRPC error, kept as the cause


async def test_force_deletes_a_stream_that_has_subscriptions(
    client: HStreamClient, name: str
) -> None:
    await client.create_stream(name)
    await client.create_subscription(f"{name}_sub", name)
    await client.delete_stream(name, force=True)
    with pytest.raises(errors.StreamNotFound):
        await client.get_stream(name)


async def test_unreachable_cluster_is_a_retriable_unavailable_error(tmp_path: object) -> None:
    # Port 1 on 127.0.0.1 refuses connections: nothing listens there unprivileged.
    with pytest.raises(errors.HStreamUnavailable) as caught:
        async with HStreamClient("hstream://127.0.0.1:1", timeout=5):
            pass
    assert caught.value.retriable is True
