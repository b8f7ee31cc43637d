"""What the console reads: GET /stats and GET /dead-letters, over the in-memory bridge.

The same endpoints against the real bridge are in test_live_console.py.
"""

import base64
import time
from dataclasses import dataclass

import httpx
import pytest

from bridge.api import create_app
from bridge.api.models import PREVIEW_BYTES
from bridge.api.stats import RATE_WINDOW, RateWindow, stats
from bridge.hstream.errors import HStreamUnavailable
from bridge.hstream.records import ReceivedRecord, RecordId
from bridge.metrics import BridgeMetrics, Totals
from rules import Rule
from tests.api.conftest import TEMPS
from tests.api.memory_bridge import DEAD_LETTER_STREAM, MemoryBridge


@dataclass(frozen=True)
class Item:
    rule_id: str
    received_at: float = 0.0
    size: int = 10


@dataclass(frozen=True)
class Route:
    rule: Rule


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def count(metrics: BridgeMetrics, rule: Rule, matched: int, stored: dict[str, int]) -> None:
    for _ in range(matched):
        metrics.observe_received(1, [Route(rule)])
    for stream, records in stored.items():
        metrics.observe_stored(stream, [Item(rule.id)] * records, 0.01, time.monotonic())


def asgi_client(bridge: MemoryBridge, clock: Clock) -> httpx.AsyncClient:
    app = create_app(bridge)
    app.state.rates = RateWindow(clock=clock)
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://127.0.0.1", timeout=10.0
    )


def letter(
    batch: int,
    payload: bytes,
    *,
    reason: str = "invalid_json",
    **attributes: str,
) -> ReceivedRecord:
    attrs = {
        "reason": reason,
        "rule": "temps",
        "mqtt.topic": f"sensors/s{batch}/d/temp",
        "time": f"2024-05-01T10:00:{batch:02d}.000+00:00",
        "original_size": str(len(payload)),
        "sha256": "ab" * 32,
        "truncated": "false",
        **attributes,
    }
    return ReceivedRecord(RecordId(1, batch, 0), payload, "", attrs, 1714557600.0 + batch)


# --- /stats -----------------------------------------------------------------------------------


async def test_stats_lists_every_rule_with_totals_and_no_rate_on_the_first_call(
    bridge: MemoryBridge,
) -> None:
    temps = bridge.rules[0]
    idle = Rule(id="idle", topic="idle/#", stream="idle", enabled=False)
    await bridge.create_rule(idle)
    count(bridge.metrics, temps, 7, {"temps_a": 3, "temps_b": 2})
    bridge.metrics.observe_dead_letter("temps", "invalid_json", 2)
    bridge.metrics.budget_bytes.set(1 << 20)
    async with asgi_client(bridge, Clock()) as client:
        response = await client.get("/stats")
    assert response.status_code == 200
    body = response.json()
    assert body["interval_seconds"] is None
    assert body["received_total"] == 7
    assert body["rules"] == [
        {
            "id": "temps",
            "enabled": True,
            "matched_total": 7,
            "stored_total": 5,  # summed over its streams
            "dead_lettered_total": 2,
            "matched_per_second": None,
            "stored_per_second": None,
            "dead_lettered_per_second": None,
        },
        {
            "id": "idle",
            "enabled": False,
            "matched_total": 0,
            "stored_total": 0,
            "dead_lettered_total": 0,
            "matched_per_second": None,
            "stored_per_second": None,
            "dead_lettered_per_second": None,
        },
    ]
    assert body["buffer"] == {
        "queuing_records": 0,
        "queuing_bytes": 0,
        "budget_bytes": 1 << 20,
        "intake_paused": False,
    }


async def test_stats_rates_are_the_change_since_an_earlier_call_per_second(
    bridge: MemoryBridge,
) -> None:
    temps = bridge.rules[0]
    clock = Clock()
    async with asgi_client(bridge, clock) as client:
        await client.get("/stats")
        count(bridge.metrics, temps, 20, {"temps_a": 16})
        bridge.metrics.observe_dead_letter("temps", "invalid_json", 4)
        clock.now += 4.0
        body = (await client.get("/stats")).json()
    assert body["interval_seconds"] == 4.0
    assert body["received_per_second"] == 5.0
    (rule,) = body["rules"]
    assert (rule["matched_per_second"], rule["stored_per_second"]) == (5.0, 4.0)
    assert rule["dead_lettered_per_second"] == 1.0


async def test_a_total_that_went_down_is_a_rate_of_zero_not_a_negative_one(
    bridge: MemoryBridge,
) -> None:
    temps = bridge.rules[0]
    clock = Clock()
    count(bridge.metrics, temps, 0, {"temps_a": 10})
    async with asgi_client(bridge, clock) as client:
        await client.get("/stats")
        bridge.metrics.forget_stream("temps_a")  # an idle stream's series go away
        clock.now += 2.0
        (rule,) = (await client.get("/stats")).json()["rules"]
    assert rule["stored_total"] == 0
    assert rule["stored_per_second"] == 0.0


async def test_stats_reports_intake_paused_and_buffer_use(bridge: MemoryBridge) -> None:
    bridge.metrics.intake_paused.set(1)
    bridge.metrics.queuing_bytes.set(4096)
    bridge.metrics.queuing_records.set(3)
    async with asgi_client(bridge, Clock()) as client:
        buffer = (await client.get("/stats")).json()["buffer"]
    assert buffer["intake_paused"] is True
    assert (buffer["queuing_records"], buffer["queuing_bytes"]) == (3, 4096)


def totals(received: int) -> Totals:
    return Totals({}, received, 0, 0, 0, 0, 0, False)


def test_the_rate_window_measures_against_a_sample_about_a_window_old() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    assert window.observe(totals(0)) is None  # nothing to measure against yet
    clock.now += 0.1
    assert window.observe(totals(1)) is None  # too short an interval
    bases = []
    for step in range(1, 30):  # a console polling every second
        clock.now += 1.0
        base = window.observe(totals(step))
        assert base is not None
        bases.append(base[0])
    # Once warmed up, the rates are over about the last RATE_WINDOW seconds, never much more.
    assert all(RATE_WINDOW <= age <= RATE_WINDOW + 1.0 for age in bases[12:]), bases
    assert len(window._samples) <= RATE_WINDOW / 0.5 + 2


def test_calls_further_apart_than_the_window_measure_since_the_previous_call() -> None:
    clock = Clock()
    window = RateWindow(clock=clock)
    window.observe(totals(0))
    clock.now += 60.0
    base = window.observe(totals(60))
    assert base is not None
    assert base[0] == 60.0
    clock.now += 45.0
    base = window.observe(totals(90))
    assert base is not None
    assert (base[0], base[1].received) == (45.0, 60)


# --- /dead-letters ----------------------------------------------------------------------------


async def test_dead_letters_are_the_latest_newest_first_with_their_context(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.dead_letter_records = [letter(i, b"bad %d" % i) for i in range(1, 31)]
    response = await client.get("/dead-letters", params={"limit": 3})
    assert response.status_code == 200
    body = response.json()
    assert (body["stream"], body["limit"]) == (DEAD_LETTER_STREAM, 3)
    assert [record["id"] for record in body["records"]] == ["1-30-0", "1-29-0", "1-28-0"]
    assert body["records"][0] == {
        "id": "1-30-0",
        "time": "2024-05-01T10:00:30.000+00:00",
        "publish_time": 1714557630.0,
        "rule": "temps",
        "topic": "sensors/s30/d/temp",
        "reason": "invalid_json",
        "error": None,
        "stream": None,
        "payload_preview": "bad 30",
        "preview_encoding": "utf-8",
        "preview_truncated": False,
        "payload_bytes": 6,
        "original_bytes": 6,
        "truncated": False,
        "sha256": "ab" * 32,
    }
    default = (await client.get("/dead-letters")).json()
    assert default["limit"] == 20
    assert len(default["records"]) == 20


async def test_a_dead_letter_preview_is_capped_and_binary_is_base64(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    long_text = "é" * 1000  # 2 bytes a character: the cap falls inside one when odd
    binary = bytes(range(256)) * 4
    bridge.dead_letter_records = [
        letter(1, long_text.encode(), truncated="true", original_size="5000000", stream="t_x"),
        letter(2, binary, reason="record_too_large", error="2000000 bytes"),
        letter(3, b""),
    ]
    records = (await client.get("/dead-letters")).json()["records"]
    empty, raw, text = records
    assert text["preview_encoding"] == "utf-8"
    assert text["payload_preview"] == "é" * (PREVIEW_BYTES // 2)
    assert text["preview_truncated"] is True
    assert (text["payload_bytes"], text["original_bytes"]) == (2000, 5_000_000)
    assert text["truncated"] is True
    assert text["stream"] == "t_x"
    assert raw["preview_encoding"] == "base64"
    assert base64.b64decode(raw["payload_preview"]) == binary[:PREVIEW_BYTES]
    assert (raw["reason"], raw["error"]) == ("record_too_large", "2000000 bytes")
    assert (empty["payload_preview"], empty["payload_bytes"]) == ("", 0)
    assert empty["preview_truncated"] is False


async def test_a_record_without_dead_letter_attributes_still_shows(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.dead_letter_records = [
        ReceivedRecord(RecordId(0, 1, 0), {"written": "by hand"}, "", {}, 1.5)
    ]
    (record,) = (await client.get("/dead-letters")).json()["records"]
    assert record["payload_preview"] == '{"written": "by hand"}'
    assert (record["rule"], record["reason"], record["time"], record["original_bytes"]) == (
        None,
        None,
        None,
        None,
    )


@pytest.mark.parametrize("limit", ["0", "-1", "201", "ten"])
async def test_a_limit_out_of_range_is_422_naming_it(client: httpx.AsyncClient, limit: str) -> None:
    response = await client.get("/dead-letters", params={"limit": limit})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limit"]


async def test_dead_letters_are_503_when_hstreamdb_does_not_answer(
    client: httpx.AsyncClient, bridge: MemoryBridge
) -> None:
    bridge.dead_letters_error = HStreamUnavailable("connection refused")
    response = await client.get("/dead-letters")
    assert response.status_code == 503
    assert "connection refused" in response.json()["detail"]


async def test_the_console_endpoints_are_in_the_openapi_document(
    client: httpx.AsyncClient,
) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["paths"]["/stats"]["get"]["tags"] == ["console"]
    dead_letters = spec["paths"]["/dead-letters"]["get"]
    (limit,) = dead_letters["parameters"]
    assert (limit["name"], limit["schema"]["maximum"]) == ("limit", 200)
    assert "503" in dead_letters["responses"]
    assert "/ui" not in spec["paths"]
    assert "/docs" not in spec["paths"]


def test_rules_seen_in_metrics_but_deleted_are_not_listed(bridge: MemoryBridge) -> None:
    gone = Rule.model_validate({**TEMPS, "id": "gone"})
    count(bridge.metrics, gone, 3, {})
    assert bridge.metrics.totals().rules["gone"].matched == 3
    body = stats(list(bridge.rules), bridge.metrics.totals(), None)
    assert [row.id for row in body.rules] == ["temps"]


async def test_an_unknown_query_parameter_is_422_naming_it(client: httpx.AsyncClient) -> None:
    response = await client.get("/dead-letters", params={"limt": 5})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "limt"]
