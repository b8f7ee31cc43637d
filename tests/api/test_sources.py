"""/sources over a real uvicorn: 422 naming the field, 409, 404, masking, re-snapshot."""

from typing import Any

import httpx
import pytest

from tests.api.conftest import TOKEN, served
from tests.api.memory_bridge import ApiTestSettings, MemoryBridge

SHOP: dict[str, Any] = {
    "id": "shop",
    "kind": "postgres",
    "dsn": "postgresql://cdc:s3cret@db:5432/shop",
    "tables": ["public.orders", "public.customers"],
    "stream": "cdc_${table}",
}


def first_loc(response: httpx.Response) -> list[Any]:
    assert response.status_code == 422, response.text
    loc: list[Any] = response.json()["detail"][0]["loc"]
    return loc


async def test_create_answers_201_masks_the_password_and_lists_it(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    response = await client.post("/sources", json=SHOP)
    assert response.status_code == 201, response.text
    assert response.headers["location"] == "/sources/shop"
    body = response.json()
    assert body["dsn"] == "postgresql://cdc:****@db:5432/shop"
    assert "s3cret" not in response.text
    assert body["format"] == "debezium"
    assert body["snapshot"] == "initial"
    assert body["status"]["state"] == "streaming"
    listed = await client.get("/sources")
    assert [s["id"] for s in listed.json()] == ["shop"]
    assert "s3cret" not in listed.text
    assert bridge.sources[0].connection().password == "s3cret"


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"kind": "sqlserver"}, "kind", "not supported yet"),
        ({"kind": "oracle"}, "kind", "postgres or mysql"),
        ({"dsn": "mysql://cdc@db/shop"}, "dsn", "postgresql://"),
        ({"dsn": "postgresql://db:5432/shop"}, "dsn", "no user"),
        ({"dsn": "postgresql://cdc@db:5432/"}, "dsn", "no database"),
        ({"tables": []}, "tables", "at least 1"),
        ({"tables": ["orders"]}, "tables", "schema.table"),
        ({"stream": "cdc_${topic}"}, "stream", "unknown placeholder"),
        ({"stream": "1bad"}, "stream", ""),
        ({"format": "avro"}, "format", ""),
        ({"snapshot": "always"}, "snapshot", ""),
        ({"id": "bad id"}, "id", "must be"),
        ({"password_env": "not-a-name"}, "password_env", "not an environment"),
        ({"slot": "x"}, "slot", ""),
    ],
)
async def test_an_invalid_source_is_422_naming_the_field(
    client: httpx.AsyncClient, change: dict[str, Any], field: str, words: str
) -> None:
    response = await client.post("/sources", json={**SHOP, **change})
    assert first_loc(response)[:2] == ["body", field]
    assert words in response.json()["detail"][0]["msg"]


async def test_duplicate_is_409_and_unknown_is_404(client: httpx.AsyncClient) -> None:
    assert (await client.post("/sources", json=SHOP)).status_code == 201
    assert (await client.post("/sources", json=SHOP)).status_code == 409
    assert (await client.get("/sources/nope")).status_code == 404
    assert (await client.put("/sources/nope", json={**SHOP, "id": "nope"})).status_code == 404
    assert (await client.delete("/sources/nope")).status_code == 404
    assert (await client.post("/sources/nope/resnapshot")).status_code == 404


async def test_put_with_the_masked_dsn_keeps_the_password(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    await client.post("/sources", json=SHOP)
    shown = (await client.get("/sources/shop")).json()
    edited = {k: v for k, v in shown.items() if k != "status"} | {"tables": ["public.orders"]}
    response = await client.put("/sources/shop", json=edited)
    assert response.status_code == 200, response.text
    assert bridge.sources[0].tables == ["public.orders"]
    assert bridge.sources[0].connection().password == "s3cret"
    mismatched = await client.put("/sources/shop", json={**SHOP, "id": "other"})
    assert first_loc(mismatched) == ["body", "id"]


async def test_delete_and_resnapshot(client: httpx.AsyncClient, bridge: MemoryBridge) -> None:
    await client.post("/sources", json=SHOP)
    assert (await client.post("/sources/shop/resnapshot")).status_code == 202
    assert bridge.resnapshots == ["shop"]
    assert (await client.delete("/sources/shop")).status_code == 204
    assert bridge.sources == []


async def test_sources_need_the_token_when_one_is_set() -> None:
    bridge = MemoryBridge(ApiTestSettings(api_token=TOKEN))
    async with served(bridge) as anonymous:
        assert (await anonymous.get("/sources")).status_code == 401
        assert (await anonymous.post("/sources", json=SHOP)).status_code == 401
    async with served(bridge, TOKEN) as client:
        assert (await client.get("/sources")).status_code == 200
