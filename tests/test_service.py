"""The bridge end to end, in-process: real Mosquitto, real gRPC to the embedded store."""

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from bridge.hstream.records import Compression, ReceivedRecord
from bridge.hstream.store.engine import DB_FILE
from bridge.service import Bridge
from tests.support.bridge import bridge_settings, running_bridge, wait_for_records
from tests.support.mosquitto import Mosquitto, publish

SITES = 3
DEVICES = 8
PER_DEVICE = 40

RULES: list[dict[str, Any]] = [
    {
        "id": "temps",
        "topic": "sensors/{site}/{dev}/temp",
        "stream": "temps_${site}",
        "key": "${dev}",
        "payload": "json",
    },
    {"id": "everything", "topic": "sensors/#", "stream": "all_raw", "key": "${topic}"},
]


def telemetry() -> list[tuple[str, bytes]]:
    messages = []
    for seq in range(PER_DEVICE):
        for site in range(SITES):
            for dev in range(DEVICES):
                body = {"site": site, "dev": dev, "seq": seq, "t": 21.5}
                messages.append((f"sensors/site{site}/dev{dev}/temp", json.dumps(body).encode()))
    return messages


def seqs_by_key(records: list[ReceivedRecord]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for record in records:
        payload = record.payload
        body = payload if isinstance(payload, dict) else json.loads(payload)
        out.setdefault(record.key, []).append(int(body["seq"]))
    return out


async def test_qos1_messages_land_in_rendered_streams_with_keys_attributes_and_order(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = bridge_settings(tmp_path, mosquitto.url, rules=RULES, stream_shards=3)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        url = bridge.store.url
        messages = telemetry()
        messages.append(("elsewhere/x", b"matches no rule"))
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)

        per_site = SITES and DEVICES * PER_DEVICE
        for site in range(SITES):
            records = await wait_for_records(url, f"temps_site{site}", per_site)
            assert len(records) == per_site
            by_key = seqs_by_key(records)
            assert sorted(by_key) == [f"dev{d}" for d in range(DEVICES)]
            for key, seqs in by_key.items():
                assert seqs == list(range(PER_DEVICE)), key  # per-key order, nothing missing
            first = records[0]
            assert first.is_json
            assert first.attributes["mqtt.topic"].startswith(f"sensors/site{site}/")
            assert first.attributes["mqtt.qos"] == "1"
            assert first.attributes["mqtt.retain"] == "false"

        raw = await wait_for_records(url, "all_raw", SITES * DEVICES * PER_DEVICE)
        assert len(raw) == SITES * DEVICES * PER_DEVICE
        assert all(isinstance(r.payload, bytes) for r in raw)
        assert {r.key for r in raw} == {t for t, _ in messages[:-1]}


async def test_bad_payloads_go_to_dead_letters_while_good_traffic_flows(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rules = [
        {"id": "json", "topic": "j/{dev}", "stream": "good", "key": "${dev}", "payload": "json"},
        {"id": "named", "topic": "n/{name}", "stream": "${name}", "payload": "raw"},
    ]
    settings = bridge_settings(tmp_path, mosquitto.url, rules=rules)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        url = bridge.store.url
        messages: list[tuple[str, bytes]] = []
        for n in range(300):
            if n % 10 == 3:
                messages.append((f"j/d{n % 4}", b"{not json " + str(n).encode()))
            elif n % 10 == 7:
                messages.append((f"j/d{n % 4}", b"[1, 2, 3]"))  # JSON, but not an object
            else:
                messages.append((f"j/d{n % 4}", json.dumps({"n": n}).encode()))
        messages.append(("n/9starts_with_digit", b"bad stream name"))
        messages.append(("n/fine_name", b"good stream name"))
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)

        good = await wait_for_records(url, "good", 240)
        assert sorted(int(r.payload["n"]) for r in good if isinstance(r.payload, dict)) == [
            n for n in range(300) if n % 10 not in (3, 7)
        ]
        letters = await wait_for_records(url, settings.dead_letter_stream, 61)
        assert len(letters) == 61
        reasons: dict[str, int] = {}
        for letter in letters:
            reasons[letter.attributes["reason"]] = reasons.get(letter.attributes["reason"], 0) + 1
            assert letter.attributes["rule"] in ("json", "named")
            assert letter.attributes["mqtt.topic"]
            assert letter.attributes["time"]
        assert reasons == {"invalid_json": 60, "invalid_stream_name": 1}
        bad_name = next(r for r in letters if r.attributes["reason"] == "invalid_stream_name")
        assert bad_name.payload == b"bad stream name"
        invalid = next(r for r in letters if r.attributes["reason"] == "invalid_json")
        assert isinstance(invalid.payload, bytes)
        assert invalid.payload.startswith(b"{not json") or invalid.payload == b"[1, 2, 3]"
        assert len(await wait_for_records(url, "fine_name", 1)) == 1


async def test_stream_deleted_and_recreated_behind_the_bridge_is_rediscovered(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from bridge.hstream.client import HStreamClient

    rules = [{"id": "r", "topic": "re/{dev}", "stream": "recreated", "key": "${dev}"}]
    settings = bridge_settings(tmp_path, mosquitto.url, rules=rules, stream_shards=2)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        url = bridge.store.url
        first = [(f"re/d{n % 4}", b"first %d" % n) for n in range(200)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, first)
        await wait_for_records(url, "recreated", 200)
        async with HStreamClient(url) as client:
            await client.delete_stream("recreated", force=True)
            await client.create_stream("recreated", shard_count=3)  # new shard ids, new split
        second = [(f"re/d{n % 4}", b"second %d" % n) for n in range(300)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, second)
        records = await wait_for_records(url, "recreated", 300)
        assert sorted(r.payload for r in records if isinstance(r.payload, bytes)) == sorted(
            p for _, p in second
        )
        by_key: dict[str, list[int]] = {}
        for record in records:
            assert isinstance(record.payload, bytes)
            by_key.setdefault(record.key, []).append(int(record.payload.split()[1]))
        assert all(seqs == sorted(seqs) for seqs in by_key.values())


async def test_two_replicas_in_a_shared_group_split_the_load_and_store_everything_once(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from tests.support.store import subprocess_store

    rules = [{"id": "r", "topic": "grp/{dev}", "stream": "grouped", "key": "${dev}"}]
    async with subprocess_store(tmp_path / "store") as store:
        common = {"hstream_url": store.url, "rules": rules, "mqtt_shared_group": "bridges"}
        one = bridge_settings(tmp_path / "one", mosquitto.url, client_id="replica-1", **common)
        two = bridge_settings(tmp_path / "two", mosquitto.url, client_id="replica-2", **common)
        async with running_bridge(one) as first, running_bridge(two) as second:
            messages = [(f"grp/d{n % 20}", b"%d" % n) for n in range(2000)]
            await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
            records = await wait_for_records(store.url, "grouped", 2000)

            def received(bridge: Bridge) -> float:
                value = bridge.metrics.registry.get_sample_value(
                    "hstream_bridge_messages_received_total", {"qos": "1"}
                )
                return float(value or 0.0)

            shares = (received(first), received(second))
        assert sorted(int(r.payload) for r in records if isinstance(r.payload, bytes)) == list(
            range(2000)
        )
        assert sum(shares) == 2000
        assert min(shares) > 0, shares


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
async def test_compressed_appends_read_back_byte_for_byte(
    mosquitto: Mosquitto, tmp_path: Path, compression: str
) -> None:
    rules = [{"id": "c", "topic": "comp/{dev}", "stream": "compressed", "key": "${dev}"}]
    settings = bridge_settings(tmp_path, mosquitto.url, rules=rules, compression=compression)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        messages = [(f"comp/d{n % 3}", b"reading %d " % n + b"z" * 300) for n in range(500)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        records = await wait_for_records(bridge.store.url, "compressed", 500)
    assert sorted(r.payload for r in records if isinstance(r.payload, bytes)) == sorted(
        p for _, p in messages
    )
    # The batches were stored compressed (the store keeps them as the bridge sent them); the
    # one uncompressed batch is the configuration (version 1, seeded from the config's rules).
    with sqlite3.connect(tmp_path / "store" / DB_FILE) as db:
        counts = dict(db.execute("SELECT compression, count(*) FROM records GROUP BY compression"))
    assert counts.pop(0, 0) == 1
    assert set(counts) == {int(Compression.parse(compression))}


async def test_idle_per_device_streams_are_forgotten_and_work_again(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from tests.support.bridge import wait_until

    rules = [{"id": "dev", "topic": "per/{dev}", "stream": "dev_${dev}"}]
    settings = bridge_settings(tmp_path, mosquitto.url, rules=rules, stream_idle_timeout=0.2)
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        assert bridge.accumulator is not None
        accumulator = bridge.accumulator
        first = [(f"per/d{n}", b"one") for n in range(5)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, first)
        for n in range(5):
            await wait_for_records(bridge.store.url, f"dev_d{n}", 1)
        await wait_until(lambda: not accumulator.streams, 10, "idle streams to be forgotten")
        # ...and every per-stream thing with them: no metric series is left behind.
        scrape = bridge.metrics.render()[0].decode()
        assert 'stream="dev_d1"' not in scrape
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("per/d0", b"two")])
        records = await wait_for_records(bridge.store.url, "dev_d0", 2)
        assert sorted(r.payload for r in records if isinstance(r.payload, bytes)) == [
            b"one",
            b"two",
        ]


async def test_the_embedded_store_is_not_served_off_loopback(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = bridge_settings(tmp_path, mosquitto.url, store_listen="0.0.0.0:0")
    with pytest.raises(ValueError, match="without authentication or TLS"):
        async with Bridge(settings):
            pass
