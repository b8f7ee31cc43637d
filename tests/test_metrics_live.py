"""/metrics of a live bridge after known traffic, and the dashboard against that live scrape."""

import asyncio
import json
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.test_dashboard import METRIC_NAME, SUFFIXES, expressions, load_dashboard
from tests.support.bridge import bridge_settings, running_bridge, wait_for_records
from tests.support.mosquitto import Mosquitto, publish

GOOD, BAD, UNMATCHED, QOS0 = 400, 37, 23, 50


def samples(body: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def scrape(api_url: str) -> str:
    async with httpx.AsyncClient(timeout=5) as http:
        response = await http.get(f"{api_url}/metrics")
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain")
        return response.text


async def test_counters_equal_the_traffic_published_stored_and_dead_lettered(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rules = [
        {"id": "tele", "topic": "t/{dev}", "stream": "tele", "key": "${dev}", "payload": "json"},
        # Overlapping filters are subscribed as one wider filter (w/+/+), so the broker also
        # delivers topics that neither rule matches: those count as unmatched.
        {"id": "w1", "topic": "w/+/c", "stream": "w"},
        {"id": "w2", "topic": "w/b/+", "stream": "w"},
    ]
    settings = bridge_settings(tmp_path, mosquitto.url, rules=rules)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        assert bridge.api_url is not None
        good = [(f"t/d{n % 5}", json.dumps({"n": n}).encode()) for n in range(GOOD)]
        bad = [(f"t/d{n % 5}", b"not json %d" % n) for n in range(BAD)]
        other = [(f"w/x{n}/y", b"x") for n in range(UNMATCHED)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, good + bad + other)
        qos0 = [(f"t/q{n}", json.dumps({"q": n}).encode()) for n in range(QOS0)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, qos0, qos=0)
        await wait_for_records(bridge.store.url, "tele", GOOD)
        await wait_for_records(bridge.store.url, settings.dead_letter_stream, BAD)
        assert bridge.accumulator is not None
        await asyncio.wait_for(bridge.accumulator.wait_empty(), 10)
        body = await scrape(bridge.api_url)

    got = samples(body)

    def value(name: str, **labels: str) -> float:
        return got.get((name, tuple(sorted(labels.items()))), 0.0)

    # QoS 0 over loopback with an idle bridge: the broker delivers them all.
    stored_qos0 = QOS0
    assert value("hstream_bridge_messages_received_total", qos="1") == GOOD + BAD + UNMATCHED
    assert value("hstream_bridge_messages_received_total", qos="0") == QOS0
    assert value("hstream_bridge_messages_matched_total", rule="tele") == GOOD + BAD + QOS0
    assert value("hstream_bridge_messages_unmatched_total") == UNMATCHED
    assert value("hstream_bridge_records_success_total", rule="tele", stream="tele") == (
        GOOD + stored_qos0
    )
    assert (
        value("hstream_bridge_records_dead_lettered_total", rule="tele", reason="invalid_json")
        == BAD
    )
    assert value("hstream_bridge_records_dropped_total", reason="qos0_overflow") == 0
    assert not [k for k in got if k[0] == "hstream_bridge_records_failed_total"]
    assert value("hstream_bridge_queuing_records") == 0
    assert value("hstream_bridge_queuing_bytes") == 0
    assert value("hstream_bridge_mqtt_connected") == 1
    assert value("hstream_bridge_rules_loaded") == 3
    # The EMQX identity: matched = success + failed + dropped + dead_lettered + queuing.
    assert value("hstream_bridge_messages_matched_total", rule="tele") == (
        value("hstream_bridge_records_success_total", rule="tele", stream="tele")
        + value("hstream_bridge_records_dead_lettered_total", rule="tele", reason="invalid_json")
    )
    assert value("hstream_bridge_end_to_end_latency_seconds_count") == GOOD + BAD + QOS0

    # Every series the dashboard queries is in this live scrape.
    series = set()
    for family in text_string_to_metric_families(body):
        for suffix in SUFFIXES[family.type]:
            series.add(family.name + suffix)
    used = {name for expr in expressions(load_dashboard()) for name in METRIC_NAME.findall(expr)}
    assert used
    # The disk buffer's families exist only with --buffer disk (tests/deploy/test_dashboard.py
    # checks them against a bound buffer); this bridge runs in memory mode.
    memory_mode = {name for name in used if not name.startswith("hstream_bridge_disk_buffer_")}
    assert len(memory_mode) < len(used)
    assert sorted(memory_mode - series) == []
