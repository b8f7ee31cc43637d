"""Bearer-token auth: /rules, /sources, /stats, /dead-letters and /metrics need the token when
one is set; probes, docs and the console's static files do not."""

import httpx
import pytest

from tests.api.conftest import SOURCE_X, TOKEN, served
from tests.api.memory_bridge import MemoryBridge

PROTECTED = [
    ("GET", "/rules", None),
    ("POST", "/rules", {"id": "x", "topic": "a", "stream": "s"}),
    ("GET", "/rules/temps", None),
    ("PUT", "/rules/temps", {"topic": "a", "stream": "s"}),
    ("DELETE", "/rules/temps", None),
    ("POST", "/rules/test", {"topic": "a"}),
    ("GET", "/metrics", None),  # its labels name rules and streams (device ids, often)
    ("GET", "/stats", None),  # names the rules
    ("GET", "/dead-letters", None),  # payloads and topics
    ("GET", "/sources", None),  # database hosts and users
    ("POST", "/sources", {**SOURCE_X, "id": "y"}),
    ("GET", "/sources/x", None),
    ("PUT", "/sources/x", SOURCE_X),
    ("DELETE", "/sources/x", None),
    ("POST", "/sources/x/resnapshot", None),
    ("GET", "/cluster", None),  # replica addresses
]
OPEN = ["/health", "/ready", "/docs", "/openapi.json", "/ui"]
SECURED_PATHS = {
    "/rules",
    "/rules/test",
    "/rules/{rule_id}",
    "/metrics",
    "/stats",
    "/dead-letters",
    "/sources",
    "/sources/{source_id}",
    "/sources/{source_id}/resnapshot",
    "/cluster",
}


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_without_the_token_every_protected_endpoint_is_401_with_www_authenticate(
    secured_bridge: MemoryBridge, method: str, path: str, body: object
) -> None:
    before = list(secured_bridge.rules)
    async with served(secured_bridge) as client:
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {TOKEN}"},
            {"Authorization": f"Bearer {TOKEN}x"},
            {"Authorization": "Bearer"},
        ):
            response = await client.request(method, path, json=body, headers=headers)
            assert response.status_code == 401, (headers, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
            assert "token" in response.json()["detail"]
    assert secured_bridge.rules == before


@pytest.mark.parametrize(("method", "path", "body"), PROTECTED)
async def test_with_the_token_every_protected_endpoint_works(
    secured_bridge: MemoryBridge, method: str, path: str, body: object
) -> None:
    async with served(secured_bridge, token=TOKEN) as client:
        response = await client.request(method, path, json=body)
    assert response.status_code in (200, 201, 202, 204), response.text


async def test_without_the_token_metrics_reveal_no_rule_or_stream(
    secured_bridge: MemoryBridge,
) -> None:
    secured_bridge.metrics.records_success.labels(rule="temps", stream="temps_dev42").inc()
    async with served(secured_bridge) as client:
        refused = await client.get("/metrics")
    async with served(secured_bridge, token=TOKEN) as client:
        scraped = await client.get("/metrics")
    assert refused.status_code == 401
    assert "temps" not in refused.text
    assert scraped.status_code == 200
    assert 'rule="temps",stream="temps_dev42"' in scraped.text


async def test_probes_and_docs_stay_open_with_a_token(
    secured_bridge: MemoryBridge,
) -> None:
    async with served(secured_bridge) as client:
        for path in OPEN:
            response = await client.get(path)
            assert response.status_code == 200, path


async def test_without_a_configured_token_no_header_is_needed(
    client: httpx.AsyncClient,
) -> None:
    assert (await client.get("/rules")).status_code == 200
    # A stray header is ignored rather than checked against nothing.
    response = await client.get("/rules", headers={"Authorization": "Bearer anything"})
    assert response.status_code == 200


async def test_openapi_declares_the_bearer_scheme_on_rules_when_a_token_is_set(
    secured_bridge: MemoryBridge,
) -> None:
    async with served(secured_bridge) as client:
        spec = (await client.get("/openapi.json")).json()
    scheme = spec["components"]["securitySchemes"]["HTTPBearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    assert set(spec["paths"]) > SECURED_PATHS
    for path, operations in spec["paths"].items():
        for operation in operations.values():
            secured = operation.get("security") == [{"HTTPBearer": []}]
            assert secured == (path in SECURED_PATHS), path
            assert ("401" in operation["responses"]) == secured, path


async def test_openapi_declares_no_auth_when_no_token_is_set(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert "securitySchemes" not in spec.get("components", {})
    for operations in spec["paths"].values():
        for operation in operations.values():
            assert "security" not in operation
            assert "401" not in operation["responses"]
