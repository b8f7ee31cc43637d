"""The Host check: a loopback API answers only requests addressed to a loopback name."""

import httpx
import pytest
from starlette.types import Message, Scope

from bridge.api import create_app, serve_api
from bridge.api.hosts import is_loopback_host_header
from tests.api.conftest import TOKEN, served
from tests.api.memory_bridge import ApiTestSettings, MemoryBridge

FOREIGN = [
    "evil.example",
    "evil.example:8080",
    "127.0.0.1.evil.example",
    "localhost.evil.example:8080",
    "10.0.0.1:8080",
    "0.0.0.0:8080",
    "[::2]:8080",
    "",
]
LOOPBACK = [
    "127.0.0.1",
    "127.0.0.1:8080",
    "127.1.2.3:80",
    "localhost",
    "localhost:8080",
    "LocalHost:8080",
    "[::1]",
    "[::1]:8080",
]


@pytest.mark.parametrize("host", FOREIGN)
async def test_a_foreign_host_is_refused_before_anything_runs(
    bridge: MemoryBridge, host: str
) -> None:
    before = list(bridge.rules)
    async with served(bridge) as client:
        for method, path in (("DELETE", "/rules/temps"), ("GET", "/rules"), ("GET", "/health")):
            response = await client.request(method, path, headers={"Host": host})
            assert response.status_code == 421, (method, path, response.text)
            assert response.headers["content-type"] == "application/json"
            detail = response.json()["detail"]
            assert "DNS rebinding" in detail
            assert "loopback" in detail
        # The same client, addressed properly, is served: the check is the Host, not the peer.
        assert (await client.get("/rules")).status_code == 200
    assert bridge.rules == before  # the DELETE did not happen


@pytest.mark.parametrize("host", LOOPBACK)
async def test_a_loopback_host_with_or_without_a_port_is_served(
    bridge: MemoryBridge, host: str
) -> None:
    async with served(bridge) as client:
        response = await client.get("/rules/temps", headers={"Host": host})
        assert response.status_code == 200, response.text
        assert response.json()["id"] == "temps"
        assert (await client.delete("/rules/temps", headers={"Host": host})).status_code == 204
    assert bridge.rules == []


async def test_a_request_without_a_host_header_is_refused() -> None:
    app = create_app(MemoryBridge())
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    scope: Scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.0",
        "method": "GET",
        "scheme": "http",
        "path": "/rules",
        "raw_path": b"/rules",
        "query_string": b"",
        "root_path": "",
        "headers": [],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8080),
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 421
    assert b"no Host header" in sent[1]["body"]


@pytest.mark.parametrize("listen", ["localhost:0", "[::1]:0", "127.0.0.1:0"])
async def test_every_loopback_listen_address_gets_the_check(listen: str) -> None:
    bridge = MemoryBridge(ApiTestSettings(api_listen=listen))
    transport = httpx.ASGITransport(app=create_app(bridge))
    async with httpx.AsyncClient(transport=transport, base_url="http://evil.example") as client:
        assert (await client.get("/health")).status_code == 421
    async with httpx.AsyncClient(transport=transport, base_url="http://localhost:8080") as client:
        assert (await client.get("/health")).status_code == 200


async def test_beyond_loopback_any_host_is_served_and_the_token_guards() -> None:
    bridge = MemoryBridge(ApiTestSettings(api_listen="0.0.0.0:0", api_token=TOKEN))
    async with serve_api(bridge) as url, httpx.AsyncClient(base_url=url) as client:
        headers = {"Host": "bridge.internal:8080"}
        assert (await client.get("/health", headers=headers)).status_code == 200
        assert (await client.get("/rules", headers=headers)).status_code == 401
        auth = {**headers, "Authorization": f"Bearer {TOKEN}"}
        assert (await client.get("/rules", headers=auth)).status_code == 200


@pytest.mark.parametrize(
    ("header", "loopback"),
    [
        *((host, True) for host in LOOPBACK),
        *((host, False) for host in FOREIGN),
        ("::1", False),  # IPv6 in a Host must be bracketed
        ("[::1]x", False),
        ("[::1]:", False),
        ("localhost:", False),
        ("localhost:80:80", False),
        ("localhost:\uff18\uff10", False),  # fullwidth digits are not a port
        ("127.0.0.1:-1", False),
        ("[127.0.0.1]", False),
    ],
)
def test_is_loopback_host_header(header: str, loopback: bool) -> None:
    assert is_loopback_host_header(header) is loopback
