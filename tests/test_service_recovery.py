"""Outages and crashes: the delivery promise under kill -9, a store outage and a broker restart."""

import asyncio
import json
import threading
import time
from pathlib import Path

from bridge.hstream.records import ReceivedRecord
from tests.support.bridge import (
    BridgeProcess,
    bridge_settings,
    read_stream,
    running_bridge,
    wait_for_records,
    wait_until,
)
from tests.support.mosquitto import Mosquitto, Publisher, publish
from tests.support.store import subprocess_store

RULE = {"id": "tele", "topic": "tele/{dev}", "stream": "tele", "key": "${dev}"}


def numbered(start: int, count: int, devices: int = 10, pad: int = 0) -> list[tuple[str, bytes]]:
    return [
        (f"tele/d{n % devices}", json.dumps({"n": n, "pad": "x" * pad}).encode())
        for n in range(start, start + count)
    ]


def numbers(records: list[ReceivedRecord]) -> list[int]:
    out = []
    for record in records:
        payload = record.payload
        body = payload if isinstance(payload, dict) else json.loads(payload)
        out.append(int(body["n"]))
    return out


def paced_publisher(
    mosquitto: Mosquitto, messages: list[tuple[str, bytes]], seconds: float
) -> tuple[threading.Thread, list[BaseException]]:
    """Publish `messages` evenly over `seconds` in a thread (every PUBACK awaited)."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with Publisher(mosquitto.host, mosquitto.port) as publisher:
                chunk = max(1, len(messages) // 50)
                started = time.monotonic()
                for i in range(0, len(messages), chunk):
                    publisher.publish_many(messages[i : i + chunk])
                    due = started + seconds * (i + chunk) / len(messages)
                    time.sleep(max(0.0, due - time.monotonic()))
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run, name="publisher")
    thread.start()
    return thread, errors


async def test_kill_9_of_the_bridge_loses_nothing_after_restart(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    total = 6000
    async with subprocess_store(tmp_path / "store") as store:
        config = tmp_path / "bridge.toml"
        config.write_text(
            '[[rules]]\nid = "tele"\ntopic = "tele/{dev}"\nstream = "tele"\nkey = "${dev}"\n'
        )
        args = [
            "--mqtt-url", mosquitto.url,
            "--hstream-url", store.url,
            "--client-id", "crash-test",
            "--config", str(config),
        ]  # fmt: skip
        bridge = BridgeProcess(tmp_path / "bridge", args)
        await bridge.start()
        thread, errors = paced_publisher(mosquitto, numbered(0, total), seconds=4.0)

        async def some_stored() -> bool:
            return len(await read_stream(store.url, "tele")) >= total // 4

        await wait_until(some_stored, 30, "a quarter of the messages to be stored")
        bridge.kill()
        stored_at_kill = len(await read_stream(store.url, "tele"))
        await bridge.start()
        await asyncio.to_thread(thread.join, 60)
        assert not errors, errors
        records = await wait_for_records(store.url, "tele", total, timeout=60)
        got = numbers(records)
        assert set(got) == set(range(total)), f"lost {sorted(set(range(total)) - set(got))[:20]}"
        duplicates = len(got) - len(set(got))
        print(
            f"\nkill -9 at {stored_at_kill}/{total} stored; duplicates after restart: {duplicates}"
        )
        assert await bridge.terminate() == 0


async def test_store_outage_is_waited_out_within_the_byte_budget(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    budget = 256 * 1024
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            mosquitto.url,
            hstream_url=store.url,
            rules=[RULE],
            buffer_bytes=budget,
            batch_max_bytes=64 * 1024,
            append_timeout=2.0,
        )
        async with running_bridge(settings) as bridge:
            assert bridge.accumulator is not None
            assert bridge.source is not None
            source, registry = bridge.source, bridge.metrics.registry

            def paused() -> bool:  # a function: mypy would keep a narrowed property narrowed
                return source.paused

            def intake_paused() -> float | None:
                return registry.get_sample_value("hstream_bridge_intake_paused")

            await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, numbered(0, 500))
            await wait_for_records(store.url, "tele", 500)
            assert not paused()
            assert intake_paused() == 0
            store.kill()
            outage_started = time.monotonic()
            # ~1 KiB a record: the broker's window alone (Receive Maximum 1000) would hold
            # 4x the budget, and all 6000 messages are 24x it.
            messages = numbered(500, 6000, pad=1000)
            thread, errors = paced_publisher(mosquitto, messages, seconds=8.0)
            # The budget is spent within the first ~300 messages (~0.4 s of publishing): from
            # then on the socket is not read, and the broker keeps the rest.
            await wait_until(paused, 10, "intake to pause while the store is down")
            assert intake_paused() == 1
            await asyncio.to_thread(thread.join, 60)
            assert not errors, errors
            # The whole outage lasts 10 s, and intake stays paused through it.
            await asyncio.sleep(max(0.0, 10.0 - (time.monotonic() - outage_started)))
            assert paused()
            assert intake_paused() == 1
            peak_during_outage = bridge.accumulator.peak_bytes
            received_during_outage = registry.get_sample_value(
                "hstream_bridge_messages_received_total", {"qos": "1"}
            )
            assert source.connected
            await store.restart()
            records = await wait_for_records(store.url, "tele", 6500, timeout=60)
            got = numbers(records)
            assert set(got) == set(range(6500))
            await wait_until(lambda: not paused(), 10, "intake to resume")
            assert intake_paused() == 0
        print(
            f"\nbyte budget {budget}, peak buffered {peak_during_outage}"
            f" (+{peak_during_outage - budget}), received {received_during_outage} of 6500"
            " by the end of the outage"
        )
        # The budget is checked after each message and intake pauses at once when it is spent;
        # what the last socket read (up to READ_CHUNK_BYTES, 16 KiB) brought beyond that waits
        # in the source, neither routed nor counted. So the peak is the budget plus less than one
        # message: its record (~1.1 KiB framed + 100 B) and, held until its PUBACK, the message
        # (~1 KiB payload + 900 B). Measured: +188 and +1,071 bytes over three runs; a source
        # that handed over the rest of the read while paused measured +77 KiB.
        assert peak_during_outage <= budget + 4 * 1024


async def test_broker_restart_is_reconnected_and_nothing_is_lost(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    settings = bridge_settings(tmp_path, mosquitto.url, rules=[RULE])
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        assert bridge.source is not None
        url = bridge.store.url
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, numbered(0, 1000))
        await wait_for_records(url, "tele", 1000)
        reconnects = bridge.source.reconnects
        await asyncio.to_thread(mosquitto.restart)
        source = bridge.source
        await wait_until(
            lambda: source.reconnects > reconnects and source.connected, 30, "reconnect"
        )
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, numbered(1000, 1000))
        records = await wait_for_records(url, "tele", 2000)
        assert set(numbers(records)) == set(range(2000))


async def test_qos0_overflow_is_dropped_and_counted_instead_of_pausing(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    rule = {"id": "q0", "topic": "q0/{dev}", "stream": "q0", "key": "${dev}", "qos": 0}
    budget = 64 * 1024
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            mosquitto.url,
            hstream_url=store.url,
            rules=[rule],
            buffer_bytes=budget,
            batch_max_bytes=16 * 1024,
            append_timeout=1.0,
        )
        async with running_bridge(settings) as bridge:
            assert bridge.source is not None
            assert bridge.accumulator is not None
            source, accumulator = bridge.source, bridge.accumulator
            store.kill()
            messages = [
                (f"q0/d{n % 5}", json.dumps({"n": n, "pad": "x" * 300}).encode())
                for n in range(2000)
            ]  # ~700 KiB: ten times the budget
            await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages, qos=0)

            def received() -> float:
                return (
                    bridge.metrics.registry.get_sample_value(
                        "hstream_bridge_messages_received_total", {"qos": "0"}
                    )
                    or 0.0
                )

            await wait_until(lambda: received() == len(messages), 30, "every QoS 0 message")
            assert not source.paused  # QoS 0 only: reading went on, nothing waits in the broker
            dropped = bridge.metrics.registry.get_sample_value(
                "hstream_bridge_records_dropped_total", {"reason": "qos0_overflow"}
            )
            assert dropped is not None
            assert dropped > 0
            assert accumulator.peak_bytes <= budget + 2 * 1024
            await store.restart()
            kept = len(messages) - int(dropped)
            records = await wait_for_records(store.url, "q0", kept, timeout=60)
            assert len(records) == kept
            print(f"\nQoS 0 while the store was down: {int(dropped)} dropped, {kept} stored")


async def test_bridge_starts_while_the_store_is_down_and_stores_once_it_is_up(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    from tests.support.store import StoreProcess, free_port

    port = free_port()
    store = StoreProcess(tmp_path / "store", port=port)
    settings = bridge_settings(
        tmp_path / "bridge", mosquitto.url, hstream_url=store.url, rules=[RULE]
    )
    async with running_bridge(settings) as bridge:
        readiness = await bridge.readiness()
        assert (readiness["mqtt"], readiness["hstream"]) == (True, False)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, numbered(0, 300))
        await store.start()
        try:
            records = await wait_for_records(store.url, "tele", 300, timeout=60)
            assert set(numbers(records)) == set(range(300))

            async def ready() -> bool:
                return bool((await bridge.readiness())["ready"])

            await wait_until(ready, 10, "/ready to say HStreamDB is reachable")
        finally:
            store.kill()
