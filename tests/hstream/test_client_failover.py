"""Failover: the client connects through, and moves its calls to, whichever listed node answers.

Each embedded store is a one-node cluster whose DescribeCluster names only itself, so these tests
list the nodes in the URL: a dead port first, or two stores of which the first is stopped.
"""

import socket
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from bridge.hstream import HStreamClient, Record, errors
from bridge.hstream.store import EmbeddedStore


def _dead_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_connect_skips_a_dead_node_listed_first(store: EmbeddedStore, name: str) -> None:
    url = f"hstream://127.0.0.1:{_dead_port()},{store.address}"
    async with HStreamClient(url) as client:
        assert client.current_target == store.address
        assert [node.target for node in client.nodes] == [store.address]
        await client.create_stream(name)
        assert (await client.get_stream(name)).name == name


async def test_calls_fail_over_to_the_next_node_when_the_current_one_goes_down(
    tmp_path: Path, name: str
) -> None:
    async with EmbeddedStore(tmp_path / "b") as second, AsyncExitStack() as first_running:
        first = await first_running.enter_async_context(EmbeddedStore(tmp_path / "a"))
        url = f"hstream://{first.address},{second.address}"
        async with HStreamClient(url) as client:
            assert client.current_target == first.address
            await client.create_stream(name)
            await first_running.aclose()  # the first node goes down

            await client.create_stream(f"{name}_b")
            assert client.current_target == second.address
            assert [s.name for s in await client.list_streams()] == [f"{name}_b"]
            assert await client.ping()


async def test_basic_auth_header_is_sent_from_the_url_credentials(
    tmp_path: Path, name: str
) -> None:
    async with EmbeddedStore(tmp_path / "s", username="bridge", password="s3cr:t") as store:
        url = f"hstream://bridge:s3cr%3At@{store.address}"
        async with HStreamClient(url) as client:
            await client.create_stream(name)
            assert (await client.get_stream(name)).name == name

        with pytest.raises(errors.HStreamError) as caught:
            async with HStreamClient(f"hstream://bridge:wrong@{store.address}"):
                pass
        assert caught.value.retriable is False
        assert "credentials" in caught.value.message


async def test_append_to_a_node_that_went_down_is_retriable_and_rediscovers_on_the_next_call(
    tmp_path: Path, name: str
) -> None:
    async with EmbeddedStore(tmp_path / "b") as second, AsyncExitStack() as first_running:
        first = await first_running.enter_async_context(EmbeddedStore(tmp_path / "a"))
        async with HStreamClient(f"hstream://{first.address},{second.address}") as client:
            await client.create_stream(name)
            assert await client.append(name, [Record(b"stored")])
            await first_running.aclose()

            with pytest.raises(errors.HStreamUnavailable) as caught:
                await client.append(name, [Record(b"lost node")])
            assert caught.value.retriable is True

            # The cached shards were dropped: the next call looks the stream up again, on the
            # node that is left (a separate store here, so the stream is not there).
            await client.create_stream(name)
            ids = await client.append(name, [Record(b"on the second node")])
            assert client.current_target == second.address
            async with client.read_stream(name) as reader:
                assert [r.id async for r in reader] == ids
