"""GET /stats and GET /dead-letters from a real Bridge: real Mosquitto, the embedded store,
uvicorn in-process. The same endpoints over the in-memory bridge are in test_console_api.py."""

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from bridge.service import Bridge
from tests.support.bridge import bridge_settings, read_stream, running_bridge, wait_until
from tests.support.mosquitto import Mosquitto, publish

JSON_RULE = {
    "id": "telemetry",
    "topic": "fleet/{device}/t",
    "stream": "telemetry",
    "payload": "json",
}


@pytest.fixture
async def live(mosquitto: Mosquitto, tmp_path: Path) -> AsyncIterator[Bridge]:
    async with running_bridge(bridge_settings(tmp_path, mosquitto.url)) as running:
        yield running


async def api(bridge: Bridge) -> httpx.AsyncClient:
    assert bridge.api_url is not None
    return httpx.AsyncClient(base_url=bridge.api_url, timeout=10.0)


async def send(broker: Mosquitto, messages: list[tuple[str, bytes]]) -> None:
    await asyncio.to_thread(publish, broker.host, broker.port, messages)


async def test_stats_count_what_the_bridge_matched_stored_and_dead_lettered(
    live: Bridge, mosquitto: Mosquitto
) -> None:
    async with await api(live) as client:
        assert (await client.post("/rules", json=JSON_RULE)).status_code == 201
        first = (await client.get("/stats")).json()
        good = [("fleet/d1/t", b'{"n": %d}' % n) for n in range(5)]
        await send(mosquitto, [*good, ("fleet/d2/t", b"not json"), ("fleet/d3/t", b"[1]")])
        latest: dict[str, Any] = {}

        async def counted() -> bool:
            latest.update((await client.get("/stats")).json())
            (rule,) = latest["rules"]
            return bool(rule["stored_total"] == 5 and rule["dead_lettered_total"] == 2)

        await wait_until(counted, 10.0, "the stats to count every message")

        async def measured() -> bool:
            latest.update((await client.get("/stats")).json())
            return latest["interval_seconds"] is not None

        await wait_until(measured, 5.0, "an interval to measure rates over")
    assert first["rules"][0]["matched_total"] == 0
    (rule,) = latest["rules"]
    assert (rule["id"], rule["enabled"], rule["matched_total"]) == ("telemetry", True, 7)
    assert (latest["received_total"], latest["unmatched_total"]) == (7, 0)
    assert latest["interval_seconds"] >= 0.5
    assert rule["matched_per_second"] > 0
    assert latest["buffer"]["budget_bytes"] == live.settings.buffer_bytes
    assert latest["buffer"]["intake_paused"] is False


async def test_dead_letters_are_the_latest_records_of_the_real_stream_newest_first(
    live: Bridge, mosquitto: Mosquitto
) -> None:
    stream = live.settings.dead_letter_stream
    async with await api(live) as client:
        empty = (await client.get("/dead-letters")).json()
        assert (empty["stream"], empty["records"]) == (stream, [])
        assert (await client.post("/rules", json=JSON_RULE)).status_code == 201
        # One at a time and all at once, so the stream holds small and large batches.
        for n in range(10):
            await send(mosquitto, [(f"fleet/d{n}/t", b"bad-%d" % n)])
        await send(mosquitto, [(f"fleet/d{n}/t", b"bad-%d" % n) for n in range(10, 40)])
        await send(mosquitto, [("fleet/last/t", "é".encode() * 300)])  # over the preview
        await wait_until(lambda: _stored(live, stream, 41), 20.0, "every dead letter to be stored")
        latest = (await client.get("/dead-letters", params={"limit": 5})).json()
        everything = (await client.get("/dead-letters", params={"limit": 200})).json()

    stored = await read_stream(live.store.url, stream)
    assert [r["id"] for r in everything["records"]] == [str(r.id) for r in reversed(stored)]
    assert [r["id"] for r in latest["records"]] == [str(r.id) for r in reversed(stored)][:5]
    newest, *older = latest["records"]
    assert newest["topic"] == "fleet/last/t"
    assert newest["payload_preview"] == "é" * 128  # 256 bytes, whole characters only
    assert newest["preview_truncated"] is True
    assert newest["payload_bytes"] == newest["original_bytes"] == 600
    assert [r["payload_preview"] for r in older] == ["bad-39", "bad-38", "bad-37", "bad-36"]
    for record in latest["records"]:
        assert (record["rule"], record["reason"], record["stream"]) == (
            "telemetry",
            "invalid_json",
            "telemetry",
        )
        assert record["time"].endswith("+00:00")
        assert record["truncated"] is False
        assert len(record["sha256"]) == 64


async def _stored(bridge: Bridge, stream: str, count: int) -> bool:
    return len(await read_stream(bridge.store.url, stream)) >= count
