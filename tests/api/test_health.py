"""/health, /ready and /metrics."""

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.api.memory_bridge import MemoryBridge


async def test_health_is_ok_even_when_nothing_is_ready(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.mqtt_ready = bridge.hstream_ready = False
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_ready_is_200_when_both_dependencies_are(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200
    assert response.json() == {
        "ready": True,
        "mqtt": True,
        "hstream": True,
        "dead_letters": True,
        "pipeline": True,
        "buffer": None,
        "not_ready": [],
        "error": None,
    }


async def test_ready_is_503_and_names_the_dependency_that_is_not(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.mqtt_ready = False
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json() == {
        "ready": False,
        "mqtt": False,
        "hstream": True,
        "dead_letters": True,
        "pipeline": True,
        "buffer": None,
        "not_ready": ["mqtt"],
        "error": None,
    }
    bridge.mqtt_ready, bridge.hstream_ready = True, False
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["hstream"]


async def test_ready_is_503_while_dead_letters_are_refused_or_a_task_failed(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.extra_readiness = {"dead_letters": False, "dead_letters_error": "InvalidArgument: no"}
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["dead_letters"]
    assert response.json()["error"] == "InvalidArgument: no"
    bridge.extra_readiness = {"failed": "RuntimeError('boom')"}
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["pipeline"]


async def test_a_failing_readiness_check_is_503_not_500(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.readiness_error = RuntimeError("boom")
    response = await client.get("/ready")
    assert response.status_code == 503
    assert response.json()["not_ready"] == ["mqtt", "hstream"]


async def test_metrics_are_prometheus_text_with_its_content_type(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.metrics.messages_unmatched.inc(7)
    response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"] == bridge.metrics.render()[1]
    assert response.headers["content-type"].startswith("text/plain; version=")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    (sample,) = families["hstream_bridge_messages_unmatched"].samples[:1]
    assert sample.value == 7
