"""EmbeddedStore and serve(): addresses, lifecycle and running inside a caller's event loop."""

import asyncio
from pathlib import Path

import grpc
import hstreamdb
import pytest

from bridge.hstream._api import HStreamApiStub, pb
from bridge.hstream.store import EmbeddedStore, check_store_listen, serve
from tests.support.store import free_port, wait_for_echo


async def test_embedded_store_reports_its_bound_port_and_url(tmp_path: Path) -> None:
    async with EmbeddedStore(tmp_path / "d") as store:
        assert store.port > 0
        assert store.address == f"127.0.0.1:{store.port}"
        assert store.url == f"hstream://127.0.0.1:{store.port}"
        async with grpc.aio.insecure_channel(store.address) as channel:
            reply = await HStreamApiStub(channel).Echo(pb.EchoRequest(msg="ping"))
        assert reply.msg == "ping"


async def test_advertised_host_is_what_lookups_answer(tmp_path: Path) -> None:
    async with EmbeddedStore(tmp_path / "d", advertised_host="localhost") as store:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{store.port}") as channel:
            node = await HStreamApiStub(channel).LookupKey(pb.LookupKeyRequest(partitionKey=""))
        assert (node.host, node.port) == ("localhost", store.port)


async def test_serve_runs_in_the_callers_loop_until_cancelled(tmp_path: Path) -> None:
    port = free_port()
    task = asyncio.create_task(serve(f"127.0.0.1:{port}", tmp_path / "d", handle_signals=False))
    await wait_for_echo(f"127.0.0.1:{port}")
    client = await hstreamdb.insecure_client(host="127.0.0.1", port=port)
    async with client:
        await client.create_stream("served")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    async with EmbeddedStore(tmp_path / "d") as store:
        assert list(store.engine.streams) == ["served"]


@pytest.mark.parametrize(
    "listen", ["127.0.0.1:6570", "127.0.0.2:0", "localhost:6570", "LOCALHOST:1", "[::1]:6570"]
)
def test_a_loopback_listen_address_needs_no_authentication(listen: str) -> None:
    check_store_listen(listen, authenticated=False)


@pytest.mark.parametrize("listen", ["0.0.0.0:6570", ":6570", "[::]:6570", "10.0.0.5:6570", "h:1"])
def test_a_listen_address_beyond_loopback_needs_auth_or_tls(listen: str) -> None:
    with pytest.raises(ValueError, match="without authentication or TLS") as refused:
        check_store_listen(listen, authenticated=False)
    message = str(refused.value)
    assert "\n" not in message
    assert listen in message
    for flag in ("--username", "--password", "--tls-cert", "--tls-key"):
        assert flag in message
    check_store_listen(listen, authenticated=True)  # with auth or TLS it is allowed


def test_the_refusal_names_the_remedy_the_caller_gives() -> None:
    with pytest.raises(ValueError, match="add the-remedy, or listen") as refused:
        check_store_listen("0.0.0.0:6570", authenticated=False, remedy="the-remedy")
    assert "--username" not in str(refused.value)


def test_a_malformed_listen_address_is_a_value_error() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        check_store_listen("0.0.0.0", authenticated=True)
