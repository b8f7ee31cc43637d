"""/rules CRUD over a real uvicorn: status codes, bodies, and the rules the bridge ends up with."""

from typing import Any

import httpx

from bridge.mqtt import SubscribeRefused
from tests.api.conftest import TEMPS
from tests.api.memory_bridge import MemoryBridge

HUMID = {"id": "humid", "topic": "sensors/{site}/+/humidity", "stream": "humid"}


def locs(response: httpx.Response) -> list[list[Any]]:
    return [error["loc"] for error in response.json()["detail"]]


async def test_list_returns_every_rule_with_defaults_filled(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    await bridge.create_rule(bridge.rules[0].model_copy(update={"id": "off", "enabled": False}))
    response = await client.get("/rules")
    assert response.status_code == 200
    assert response.json() == [TEMPS, {**TEMPS, "id": "off", "enabled": False}]


async def test_create_answers_201_with_location_and_the_rule_takes_effect(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    response = await client.post("/rules", json=HUMID)
    assert response.status_code == 201
    assert response.headers["location"] == "/rules/humid"
    expected = {**HUMID, "key": "", "payload": "raw", "qos": 1, "enabled": True}
    assert response.json() == expected
    assert (await client.get(response.headers["location"])).json() == expected
    assert [rule.id for rule in bridge.rules] == ["temps", "humid"]
    assert bridge.router.routes("sensors/lab/d1/humidity")[0].stream == "humid"


async def test_create_with_a_taken_id_is_409_and_changes_nothing(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    before = list(bridge.rules)
    response = await client.post("/rules", json={**TEMPS, "stream": "other"})
    assert response.status_code == 409
    assert response.json() == {"detail": "rule 'temps' already exists"}
    assert bridge.rules == before


async def test_invalid_fields_are_422_with_the_field_in_loc(client: httpx.AsyncClient) -> None:
    cases: list[tuple[dict[str, Any], list[Any]]] = [
        ({**HUMID, "topic": "a/#/b"}, ["body", "topic"]),
        ({**HUMID, "stream": "s_${nope}"}, ["body", "stream"]),
        ({**HUMID, "key": "${missing}"}, ["body", "key"]),
        ({**HUMID, "id": "no spaces"}, ["body", "id"]),
        ({**HUMID, "payload": "xml"}, ["body", "payload"]),
        ({**HUMID, "qos": 3}, ["body", "qos"]),
        ({**HUMID, "qos": "1"}, ["body", "qos"]),
        ({**HUMID, "enabled": "yes"}, ["body", "enabled"]),
        ({"id": "x", "stream": "s"}, ["body", "topic"]),
    ]
    for body, loc in cases:
        response = await client.post("/rules", json=body)
        assert response.status_code == 422, body
        assert loc in locs(response), (body, response.json())
        assert all(isinstance(e["msg"], str) and e["msg"] for e in response.json()["detail"])


async def test_a_template_error_message_says_what_is_wrong(client: httpx.AsyncClient) -> None:
    response = await client.post("/rules", json={**HUMID, "stream": "s_${nope}"})
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "stream"]
    assert "nope" in error["msg"]


async def test_unknown_fields_are_refused(client: httpx.AsyncClient) -> None:
    response = await client.post("/rules", json={**HUMID, "straem": "typo"})
    assert response.status_code == 422
    assert ["body", "straem"] in locs(response)


async def test_malformed_json_and_non_objects_are_422(client: httpx.AsyncClient) -> None:
    for content in (b'{"id": "x",', b"[]", b'"rule"', b"null", b"\xff\xfe"):
        response = await client.post(
            "/rules", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, content
        assert response.json()["detail"][0]["loc"][0] == "body"


async def test_get_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    for rule_id in ("nope", "not a valid id", "%C3%A9"):
        response = await client.get(f"/rules/{rule_id}")
        assert response.status_code == 404
        assert "detail" in response.json()


async def test_put_replaces_the_whole_rule(client: httpx.AsyncClient, bridge: MemoryBridge) -> None:
    response = await client.put(
        "/rules/temps", json={"topic": "sensors/{site}/+/temp", "stream": "all_temps"}
    )
    assert response.status_code == 200
    replaced = {**TEMPS, "stream": "all_temps", "key": ""}
    assert response.json() == replaced
    assert bridge.rules[0].model_dump() == replaced
    assert bridge.router.routes("sensors/a/b/temp")[0].stream == "all_temps"


async def test_put_with_the_same_id_in_the_body_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.put("/rules/temps", json={**TEMPS, "qos": 2})
    assert response.status_code == 200
    assert response.json()["qos"] == 2


async def test_put_with_a_different_id_is_422_naming_id(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    before = list(bridge.rules)
    response = await client.put("/rules/temps", json={**TEMPS, "id": "other"})
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "id"]
    assert "temps" in error["msg"]
    assert "other" in error["msg"]
    assert bridge.rules == before


async def test_put_invalid_rule_is_422_with_the_field_in_loc(client: httpx.AsyncClient) -> None:
    response = await client.put("/rules/temps", json={"topic": "a/+/b", "stream": "9bad"})
    assert response.status_code == 422
    assert locs(response) == [["body", "stream"]]
    response = await client.put("/rules/temps", json={"stream": "s", "extra": 1})
    assert response.status_code == 422
    assert sorted(map(str, locs(response))) == sorted(
        [str(["body", "topic"]), str(["body", "extra"])]
    )


async def test_put_unknown_id_is_404(client: httpx.AsyncClient) -> None:
    response = await client.put("/rules/nope", json=HUMID | {"id": "nope"})
    assert response.status_code == 404


async def test_put_malformed_body_is_422(client: httpx.AsyncClient) -> None:
    for content in (b"{", b"[1]", b"42"):
        response = await client.put(
            "/rules/temps", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, content


async def test_delete_is_204_then_404(client: httpx.AsyncClient, bridge: MemoryBridge) -> None:
    response = await client.delete("/rules/temps")
    assert response.status_code == 204
    assert response.content == b""
    assert bridge.rules == []
    assert not bridge.router.routes("sensors/a/b/temp")
    assert (await client.delete("/rules/temps")).status_code == 404
    assert (await client.get("/rules/temps")).status_code == 404


async def test_a_change_this_replica_could_not_apply_is_500_saying_it_is_stored(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.apply_error = RuntimeError("the runner would not stop")
    for response in (
        await client.post("/rules", json=HUMID),
        await client.put("/rules/temps", json=TEMPS),
        await client.delete("/rules/temps"),
    ):
        assert response.status_code == 500
        detail = response.json()["detail"]
        assert "is stored, but this replica could not apply it" in detail
        assert "RuntimeError: the runner would not stop" in detail
    assert [rule.id for rule in bridge.rules] == ["temps"]


async def test_an_unconfirmed_subscription_is_502_saying_the_change_stands(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.subscribe_error = SubscribeRefused({"sensors/+/+/humidity": 0x87})
    response = await client.post("/rules", json=HUMID)
    assert response.status_code == 502
    assert "saved" in response.json()["detail"]
    assert "0x87" in response.json()["detail"]
    assert bridge.get_rule("humid") is not None


async def test_inputs_strict_json_cannot_echo_are_still_a_422(client: httpx.AsyncClient) -> None:
    """Python's JSON parser accepts NaN and lone surrogates; the 422 that echoes them must not
    turn into a 500 (FastAPI's default handler would)."""
    for content in (
        b'{"id": NaN, "topic": "a", "stream": "s"}',
        b'{"id": "x", "topic": "a", "stream": "s", "qos": -Infinity}',
        b'{"id": "\\ud800", "topic": "a", "stream": "s"}',
    ):
        response = await client.post(
            "/rules", content=content, headers={"content-type": "application/json"}
        )
        assert response.status_code == 422, content
        assert response.json()["detail"][0]["loc"][0] == "body"
    response = await client.put(
        "/rules/temps", content=b'{"id": NaN}', headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["input"] == "NaN"
