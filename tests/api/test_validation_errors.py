"""A 422 echoes what it refuses, but never more than a little of it.

Before: a 2 MB dry-run payload came back whole in the 422, and a body of many unknown fields
came back several times larger than it went in.
"""

import json
from typing import Any

import httpx

from bridge.api.app import MAX_ECHOED_INPUT, MAX_ERROR_TEXT, MAX_ERRORS
from bridge.api.models import MAX_DRY_RUN_PAYLOAD


async def refused(client: httpx.AsyncClient, path: str, body: object) -> list[dict[str, Any]]:
    response = await client.post(path, json=body)
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    return detail


async def test_an_oversized_dry_run_payload_is_echoed_cut_with_a_marker(
    client: httpx.AsyncClient,
) -> None:
    payload = "x" * (2 * MAX_DRY_RUN_PAYLOAD)
    response = await client.post("/rules/test", json={"topic": "a/b", "payload": payload})
    assert response.status_code == 422
    assert len(response.content) < 2048  # not the 2 MB that came in
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "payload"]
    assert error["type"] == "payload_size"
    assert "more than the limit" in error["msg"]  # the message is kept whole
    cut = len(payload) - MAX_ECHOED_INPUT
    assert error["input"] == "x" * MAX_ECHOED_INPUT + f"...[{cut} more characters]"


async def test_a_short_input_is_echoed_as_it_came(client: httpx.AsyncClient) -> None:
    (error,) = await refused(client, "/rules/test", {"topic": "a/+", "payload": "21.5"})
    assert error["loc"] == ["body", "topic"]
    assert error["input"] == "a/+"
    (error,) = await refused(client, "/rules/test", {"topic": "a", "extra": {"k": [1, 2]}})
    assert error["input"] == {"k": [1, 2]}  # small objects keep their shape


async def test_a_large_object_input_is_echoed_as_its_json_text_cut(
    client: httpx.AsyncClient,
) -> None:
    big = {f"k{n}": "v" * 100 for n in range(100)}
    (error,) = await refused(client, "/rules/test", {"topic": "a", "user_properties": big})
    assert error["loc"] == ["body", "user_properties"]
    text = json.dumps(big, separators=(",", ":"))
    marker = f"...[{len(text) - MAX_ECHOED_INPUT} more characters]"
    assert error["input"] == text[:MAX_ECHOED_INPUT] + marker


async def test_messages_that_quote_the_input_are_cut_too(client: httpx.AsyncClient) -> None:
    topic = "a/+" + "b" * 5000  # the error quotes the topic (and one over 64 KiB is refused)
    (error,) = await refused(client, "/rules/test", {"topic": topic})
    assert error["input"].startswith("a/+bbb")
    assert len(error["input"]) < MAX_ECHOED_INPUT + 40
    assert len(error["msg"]) < MAX_ERROR_TEXT + 40
    assert error["msg"].endswith("more characters]")


async def test_many_errors_are_listed_up_to_a_limit_with_the_count_of_the_rest(
    client: httpx.AsyncClient,
) -> None:
    body = {"topic": "a", **{f"unknown{n}": n for n in range(5000)}}
    detail = await refused(client, "/rules/test", body)
    assert len(detail) == MAX_ERRORS + 1
    assert all(error["type"] == "extra_forbidden" for error in detail[:MAX_ERRORS])
    assert detail[-1] == {
        "type": "too_many_errors",
        "loc": ["body"],
        "msg": f"{5000 - MAX_ERRORS} more errors not shown",
        "input": None,
    }


async def test_a_long_rule_id_is_refused_without_echoing_it_whole(
    client: httpx.AsyncClient,
) -> None:
    rule = {"id": "r" * 1_000_000, "topic": "a/b", "stream": "s"}
    response = await client.post("/rules", json=rule)
    assert response.status_code == 422
    assert len(response.content) < 4096
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "id"]
