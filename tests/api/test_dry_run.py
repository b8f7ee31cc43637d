"""POST /rules/test: the records a message would make, through the real Router, writing nothing."""

import base64
import json
from typing import Any

import httpx
import pytest

from bridge.api.models import MAX_DRY_RUN_PAYLOAD
from rules import Rule
from tests.api.conftest import served
from tests.api.memory_bridge import DEAD_LETTER_STREAM, MemoryBridge

RAW = Rule(id="temps", topic="sensors/{site}/+/temp", stream="temps_${site}", key="${site}")
JSON = Rule(
    id="telemetry",
    topic="devices/{device}/telemetry",
    stream="telemetry",
    key="${device}",
    payload="json",
)
BY_TOPIC = Rule(id="by-topic", topic="sensors/#", stream="${topic}", qos=0)


@pytest.fixture
def bridge() -> MemoryBridge:
    return MemoryBridge(rules=[RAW, JSON, BY_TOPIC])


async def dry_run(client: httpx.AsyncClient, **body: object) -> Any:
    """The decoded JSON answer of a dry run that must succeed."""
    response = await client.post("/rules/test", json=body)
    assert response.status_code == 200, response.text
    return response.json()


async def test_raw_payload_shows_stream_key_attributes_and_text(
    client: httpx.AsyncClient,
) -> None:
    result = await dry_run(
        client,
        topic="sensors/lab1/dev7/temp",
        payload="21.5",
        qos=1,
        retain=True,
        user_properties={"unit": "C"},
    )
    assert result["matched"] == ["temps", "by-topic"]
    first, second = result["routes"]
    assert first == {
        "rule_id": "temps",
        "stream": "temps_lab1",
        "key": "lab1",
        "dead_letter": False,
        "reason": None,
        "target": None,
        "record": {
            "flag": "RAW",
            "key": "lab1",
            "attributes": {
                "mqtt.topic": "sensors/lab1/dev7/temp",
                "mqtt.qos": "1",
                "mqtt.retain": "true",
                "mqtt.user.unit": "C",
            },
            "payload": "21.5",
            "payload_encoding": "utf-8",
        },
    }
    assert second["stream"] == "sensors_lab1_dev7_temp"
    assert second["key"] == ""


async def test_json_payload_is_shown_as_the_object_in_a_json_record(
    client: httpx.AsyncClient,
) -> None:
    payload = {"temp": 21.5, "ok": True, "tags": ["a", "b"], "nested": {"n": None}}
    result = await dry_run(client, topic="devices/d9/telemetry", payload=json.dumps(payload))
    (route,) = result["routes"]
    assert route["stream"] == "telemetry"
    assert route["key"] == "d9"
    assert route["dead_letter"] is False
    assert route["record"]["flag"] == "JSON"
    assert route["record"]["payload_encoding"] == "json"
    assert route["record"]["payload"] == payload


async def test_invalid_json_shows_the_dead_letter_and_its_reason(
    client: httpx.AsyncClient,
) -> None:
    result = await dry_run(client, topic="devices/d9/telemetry", payload="{not json")
    (route,) = result["routes"]
    assert route["dead_letter"] is True
    assert route["reason"] == "invalid_json"
    assert route["stream"] == DEAD_LETTER_STREAM
    assert route["target"] == "telemetry"
    record = route["record"]
    assert record["flag"] == "RAW"
    assert record["payload"] == "{not json"
    assert record["attributes"]["reason"] == "invalid_json"
    assert record["attributes"]["rule"] == "telemetry"
    assert record["attributes"]["mqtt.topic"] == "devices/d9/telemetry"


async def test_a_json_array_is_not_an_object_and_is_dead_lettered(
    client: httpx.AsyncClient,
) -> None:
    result = await dry_run(client, topic="devices/d9/telemetry", payload="[1, 2]")
    assert result["routes"][0]["reason"] == "invalid_json"


async def test_an_invalid_rendered_stream_name_is_a_dead_letter_without_target(
    client: httpx.AsyncClient,
) -> None:
    # `${topic}` renders "_9/x" -> "__9_x"... a name must start with a letter: dead letter.
    result = await dry_run(client, topic="sensors/9/x/temp", payload="1")
    routes = {route["rule_id"]: route for route in result["routes"]}
    assert routes["temps"]["dead_letter"] is False
    assert routes["temps"]["stream"] == "temps_9"
    result = await dry_run(client, topic="sensors", payload="1")
    (route,) = result["routes"]
    assert route["rule_id"] == "by-topic"
    assert route["stream"] == "sensors"
    # A capture that makes the name start with a digit:
    bridge = MemoryBridge(rules=[Rule(id="site", topic="s/{site}", stream="${site}")])
    async with served(bridge) as other:
        result = await dry_run(other, topic="s/9lab", payload="x")
    (route,) = result["routes"]
    assert route["dead_letter"] is True
    assert route["reason"] == "invalid_stream_name"
    assert route["stream"] == DEAD_LETTER_STREAM
    assert route["target"] is None
    assert route["record"]["attributes"]["reason"] == "invalid_stream_name"


async def test_no_matching_rule_is_an_empty_result(client: httpx.AsyncClient) -> None:
    assert await dry_run(client, topic="other/topic", payload="x") == {"matched": [], "routes": []}


async def test_binary_payload_base64_in_and_out(client: httpx.AsyncClient) -> None:
    data = bytes(range(256))
    result = await dry_run(
        client, topic="sensors/a/b/temp", payload_base64=base64.b64encode(data).decode()
    )
    record = result["routes"][0]["record"]
    assert record["payload_encoding"] == "base64"
    assert base64.b64decode(record["payload"]) == data


async def test_payload_defaults_to_empty(client: httpx.AsyncClient) -> None:
    result = await dry_run(client, topic="sensors/a/b/temp")
    assert result["routes"][0]["record"]["payload"] == ""


async def test_a_record_over_the_size_limit_is_shown_as_dead_letter() -> None:
    bridge = MemoryBridge(rules=[RAW], max_record_bytes=1024)
    async with served(bridge) as client:
        result = await dry_run(client, topic="sensors/a/b/temp", payload="x" * 2000)
    assert result["routes"][0]["reason"] == "record_too_large"


async def test_the_dry_run_changes_no_metrics_or_rules(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    before = (await client.get("/metrics")).text
    await dry_run(client, topic="sensors/a/b/temp", payload="1")
    assert bridge.rules == [RAW, JSON, BY_TOPIC]
    after = (await client.get("/metrics")).text
    assert _samples(after) == _samples(before)


def _samples(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("hstream_bridge_messages")]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"topic": "sensors/+/x"}, ["body", "topic"]),
        ({"topic": ""}, ["body", "topic"]),
        ({"topic": "a", "payload": "x", "payload_base64": "eA=="}, ["body", "payload_base64"]),
        ({"topic": "a", "payload_base64": "not base64!"}, ["body", "payload_base64"]),
        ({"topic": "a", "qos": 3}, ["body", "qos"]),
        ({"topic": "a", "qos": True}, ["body", "qos"]),
        ({"topic": "a", "retain": "no"}, ["body", "retain"]),
        ({"topic": "a", "user_properties": {"k": 1}}, ["body", "user_properties", "k"]),
        ({"topic": "a", "user_properties": {"k": "\ud800"}}, ["body", "user_properties", "k"]),
        ({"topic": "a", "payload": "\ud800"}, ["body", "payload"]),
        ({"topic": "a", "colour": "red"}, ["body", "colour"]),
        ({"payload": "x"}, ["body", "topic"]),
    ],
)
async def test_invalid_dry_run_requests_are_422_naming_the_field(
    client: httpx.AsyncClient, body: dict[str, object], loc: list[object]
) -> None:
    # ensure_ascii: lone surrogates travel as \ud800 escapes, as a JSON client may send them.
    response = await client.post(
        "/rules/test", content=json.dumps(body), headers={"content-type": "application/json"}
    )
    assert response.status_code == 422
    assert loc in [error["loc"] for error in response.json()["detail"]], response.json()


async def test_a_payload_over_one_mebibyte_is_refused(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/rules/test", json={"topic": "a", "payload": "x" * (MAX_DRY_RUN_PAYLOAD + 1)}
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "payload"]
    big = base64.b64encode(b"\0" * (MAX_DRY_RUN_PAYLOAD + 1)).decode()
    response = await client.post("/rules/test", json={"topic": "a", "payload_base64": big})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "payload_base64"]


async def test_a_payload_of_exactly_one_mebibyte_is_routed(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/rules/test", json={"topic": "sensors/a/b/temp", "payload": "x" * MAX_DRY_RUN_PAYLOAD}
    )
    assert response.status_code == 200
    assert response.json()["matched"] == ["temps", "by-topic"]


@pytest.mark.parametrize(
    "payload",
    ['{"n": ' + "9" * 400 + "}", '{"a": ' + "[" * 5000 + "]" * 5000 + "}"],
    ids=["int-beyond-double", "deep-nesting"],
)
async def test_json_the_router_cannot_encode_is_422_not_500(
    client: httpx.AsyncClient, payload: str
) -> None:
    response = await client.post(
        "/rules/test", json={"topic": "devices/d/telemetry", "payload": payload}
    )
    # The router raises on these today (422 naming the payload); a router that dead-letters
    # them instead is fine too. A 500 is not.
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["detail"][0]["loc"] == ["body", "payload"]
    else:
        assert response.json()["routes"][0]["dead_letter"] is True


@pytest.mark.parametrize(
    "payload",
    ['{"a": ' + "[" * 150 + "]" * 150 + "}", '{"a": NaN, "b": 1}', '{"a": 1e999}'],
    ids=["beyond-protobuf-depth", "nan", "infinite"],
)
async def test_json_a_struct_cannot_hold_is_shown_as_a_dead_letter(
    client: httpx.AsyncClient, payload: str
) -> None:
    result = await dry_run(client, topic="devices/d/telemetry", payload=payload)
    route = result["routes"][0]
    assert route["dead_letter"] is True
    assert route["reason"] == "invalid_json"
