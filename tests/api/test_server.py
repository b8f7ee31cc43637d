"""serve_api: a real uvicorn in our event loop, on a free port, without signal handlers."""

import asyncio
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from bridge.api import is_loopback, parse_listen, serve_api
from bridge.api.limits import MAX_BODY_BYTES
from tests.api.conftest import TOKEN, served
from tests.api.memory_bridge import ApiTestSettings, MemoryBridge


async def test_port_zero_serves_on_a_free_loopback_port() -> None:
    async with serve_api(MemoryBridge()) as url:
        assert url.startswith("http://127.0.0.1:")
        port = int(url.rpartition(":")[2])
        assert port > 0
        async with httpx.AsyncClient() as client:
            assert (await client.get(f"{url}/health")).status_code == 200
    # Closed on exit: nothing listens there any more.
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", port), 1):
        pass


@pytest.mark.parametrize("listen", ["0.0.0.0:0", ":0", "[::]:0", "192.0.2.1:0", "example.com:0"])
async def test_a_non_loopback_address_without_a_token_is_refused(listen: str) -> None:
    bridge = MemoryBridge(ApiTestSettings(api_listen=listen))
    with pytest.raises(ValueError, match="without an API token"):
        async with serve_api(bridge):
            pass


async def test_all_interfaces_with_a_token_is_served_and_reached_through_loopback() -> None:
    bridge = MemoryBridge(ApiTestSettings(api_listen="0.0.0.0:0", api_token=TOKEN))
    async with serve_api(bridge) as url, httpx.AsyncClient() as client:
        assert url.startswith("http://127.0.0.1:")
        assert (await client.get(f"{url}/health")).status_code == 200


async def test_localhost_is_served_on_127_0_0_1() -> None:
    bridge = MemoryBridge(ApiTestSettings(api_listen="localhost:0"))
    async with serve_api(bridge) as url:
        assert url.startswith("http://127.0.0.1:")


@pytest.mark.parametrize("listen", ["8080", "127.0.0.1:http", "127.0.0.1:70000", "127.0.0.1:"])
async def test_malformed_listen_addresses_are_value_errors(listen: str) -> None:
    with pytest.raises(ValueError, match="listen address"):
        async with serve_api(MemoryBridge(ApiTestSettings(api_listen=listen))):
            pass


def test_parse_listen_and_is_loopback() -> None:
    assert parse_listen("127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert parse_listen("[::1]:0") == ("::1", 0)
    assert parse_listen(":9") == ("0.0.0.0", 9)
    assert is_loopback("127.0.0.2")
    assert is_loopback("::1")
    assert is_loopback("localhost")
    assert not is_loopback("0.0.0.0")
    assert not is_loopback("10.0.0.1")
    assert not is_loopback("my-host")


async def test_a_port_in_use_is_an_os_error_naming_the_address() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        listen = f"127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
            async with serve_api(MemoryBridge(ApiTestSettings(api_listen=listen))):
                pass


async def test_no_signal_handlers_are_installed_or_raised() -> None:
    handled = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.getsignal(sig) for sig in handled}
    async with served(MemoryBridge()) as client:
        assert (await client.get("/health")).status_code == 200
        assert {sig: signal.getsignal(sig) for sig in handled} == before
    assert {sig: signal.getsignal(sig) for sig in handled} == before


async def test_exit_is_bounded_while_a_request_hangs() -> None:
    bridge = MemoryBridge()
    bridge.readiness_gate = asyncio.Event()  # never set: /ready hangs
    async with httpx.AsyncClient(timeout=30) as client:
        started = time.monotonic()
        async with serve_api(bridge, shutdown_timeout=1.0) as url:
            hanging = asyncio.create_task(client.get(f"{url}/ready"))
            await asyncio.wait_for(bridge.readiness_entered.wait(), 5.0)
            exiting = time.monotonic()
        elapsed = time.monotonic() - exiting
        assert elapsed < 4.0, elapsed
        # The hung request is cut (uvicorn cancels it after the grace period): it ends with an
        # error or a 5xx, it does not hang the client.
        try:
            response = await asyncio.wait_for(hanging, 5.0)
        except httpx.HTTPError:
            pass
        else:
            assert response.status_code >= 500
    assert time.monotonic() - started < 10.0


async def test_exit_with_an_idle_keep_alive_connection_is_quick() -> None:
    async with httpx.AsyncClient() as client:
        async with serve_api(MemoryBridge()) as url:
            assert (await client.get(f"{url}/health")).status_code == 200
            exiting = time.monotonic()
        assert time.monotonic() - exiting < 2.0


async def test_a_body_over_the_limit_is_413_by_declared_length(client: httpx.AsyncClient) -> None:
    body = b"x" * (MAX_BODY_BYTES + 1)
    response = await client.post(
        "/rules/test", content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413
    assert "larger than" in response.json()["detail"]


async def test_a_streamed_body_over_the_limit_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        chunk = b"x" * (1 << 20)
        for _ in range(MAX_BODY_BYTES // len(chunk) + 2):
            yield chunk

    response = await client.post(
        "/rules", content=chunks(), headers={"content-type": "application/json"}
    )
    assert response.status_code == 413


async def test_access_log_is_off_by_default(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    for enabled in (False, True, False):
        caplog.clear()
        async with (
            serve_api(MemoryBridge(), access_log=enabled) as url,
            httpx.AsyncClient() as client,
        ):
            await client.get(f"{url}/health")
        access = [r for r in caplog.records if r.name == "uvicorn.access"]
        assert bool(access) == enabled, access


async def test_openapi_has_titles_descriptions_and_the_design_rule_example(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "hstream-bridge"
    assert "Bearer" in spec["info"]["description"]
    post = spec["paths"]["/rules"]["post"]
    example = post["requestBody"]["content"]["application/json"]["examples"]["temps"]["value"]
    assert example == {
        "id": "temps",
        "topic": "sensors/{site}/+/temp",
        "stream": "temps_${site}",
        "key": "${site}",
        "payload": "raw",
        "qos": 1,
        "enabled": True,
    }
    assert set(spec["paths"]) == {
        "/rules",
        "/rules/test",
        "/rules/{rule_id}",
        "/health",
        "/ready",
        "/metrics",
        "/stats",
        "/dead-letters",
        "/sources",
        "/sources/{source_id}",
        "/sources/{source_id}/resnapshot",
        "/cluster",
    }
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert operation["summary"]
    put_body = spec["paths"]["/rules/{rule_id}"]["put"]["requestBody"]["content"]
    assert "id" not in put_body["application/json"]["schema"]["required"]
    docs = await client.get("/docs")
    assert docs.status_code == 200
    assert "swagger" in docs.text.lower()
