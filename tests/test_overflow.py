"""QoS 0 beside QoS 1 under pressure: the store is down and the byte budget is spent.

README.md "The delivery promise": with `--qos0-overflow drop` (the default) QoS 0 messages that
arrive while the buffer is full are dropped and counted; with any QoS 1/2 rule the bridge pauses
the socket instead, so no QoS 1 message is dropped; `--qos0-overflow block` always pauses.
(With QoS 0 rules only and `drop`, the bridge keeps reading and drops: see
test_service_recovery.py.)

Mosquitto (tests/support/mosquitto.py) does not set `queue_qos0_messages`, so it would drop QoS 0
messages for an absent session; but the bridge stays connected while paused, and for a connected
session Mosquitto queues QoS 0 messages on the connection like any other. So every QoS 0 message
published here reaches the bridge once it reads again, and the tests can count them all.
"""

import asyncio
import json
from pathlib import Path

from bridge.hstream.records import ReceivedRecord
from bridge.service import Bridge
from tests.support.bridge import bridge_settings, running_bridge, wait_for_records, wait_until
from tests.support.mosquitto import Mosquitto, Publisher
from tests.support.store import subprocess_store

BUDGET = 64 * 1024
# One message costs ~1.7 KiB of budget (record ~0.4 KiB + 100 B; held QoS 1 message ~0.3 KiB
# + 900 B): intake pauses at once when the budget is spent, so the peak is under one more.
PEAK_SLACK = 4 * 1024
MESSAGES = 1000  # of each QoS: ~25x the budget in QoS 1 messages alone
Q1_RULE = {"id": "q1", "topic": "q1/{dev}", "stream": "q1", "key": "${dev}", "qos": 1}
Q0_RULE = {"id": "q0", "topic": "q0/{dev}", "stream": "q0", "key": "${dev}", "qos": 0}


def numbered(prefix: str, count: int) -> list[tuple[str, bytes]]:
    return [
        (f"{prefix}/d{n % 5}", json.dumps({"n": n, "pad": "x" * 300}).encode())
        for n in range(count)
    ]


def numbers(records: list[ReceivedRecord]) -> list[int]:
    out = []
    for record in records:
        payload = record.payload
        body = payload if isinstance(payload, dict) else json.loads(payload)
        out.append(int(body["n"]))
    return out


def received(bridge: Bridge, qos: int) -> float:
    value = bridge.metrics.registry.get_sample_value(
        "hstream_bridge_messages_received_total", {"qos": str(qos)}
    )
    return value or 0.0


def dropped(bridge: Bridge) -> float:
    """QoS 0 records the bridge dropped because the buffer was full (0 when none ever were)."""
    value = bridge.metrics.registry.get_sample_value(
        "hstream_bridge_records_dropped_total", {"reason": "qos0_overflow"}
    )
    return value or 0.0


def intake_paused(bridge: Bridge) -> float | None:
    return bridge.metrics.registry.get_sample_value("hstream_bridge_intake_paused")


def publish_interleaved(
    mosquitto: Mosquitto,
    qos1: list[tuple[str, bytes]],
    qos0: list[tuple[str, bytes]],
    chunk: int = 50,
) -> None:
    """One connection: a chunk of QoS 0 messages, then a chunk of QoS 1 (PUBACKs awaited), ..."""
    with Publisher(mosquitto.host, mosquitto.port) as publisher:
        for start in range(0, max(len(qos1), len(qos0)), chunk):
            publisher.publish_many(qos0[start : start + chunk], qos=0)
            publisher.publish_many(qos1[start : start + chunk], qos=1)


async def stored(url: str, stream: str, count: int) -> list[int]:
    """The numbers stored in `stream`, once it holds `count` records (failing after 30 s)."""
    return numbers(await wait_for_records(url, stream, count, timeout=30))


async def test_qos1_beside_qos0_pauses_and_drops_no_qos1_and_counts_every_qos0(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            mosquitto.url,
            hstream_url=store.url,
            rules=[Q1_RULE, Q0_RULE],
            buffer_bytes=BUDGET,
            batch_max_bytes=16 * 1024,
            append_timeout=1.0,
        )
        assert settings.qos0_overflow == "drop"  # the default
        async with running_bridge(settings) as bridge:
            assert bridge.source is not None
            assert bridge.accumulator is not None
            source, accumulator = bridge.source, bridge.accumulator

            def paused() -> bool:  # a function: mypy keeps a narrowed property narrowed
                return source.paused

            assert not paused()
            store.kill()
            qos1, qos0 = numbered("q1", MESSAGES), numbered("q0", MESSAGES)
            publishing = asyncio.create_task(
                asyncio.to_thread(publish_interleaved, mosquitto, qos1, qos0)
            )
            await wait_until(paused, 10, "intake to pause while the store is down")
            assert intake_paused(bridge) == 1
            await asyncio.wait_for(publishing, 30)
            # Everything is published; the broker keeps what the bridge has not read.
            assert paused()
            assert received(bridge, 1) < MESSAGES
            assert accumulator.peak_bytes <= BUDGET + PEAK_SLACK
            # Intake pauses the moment the budget is spent, before another message is routed:
            # no message, QoS 0 included, meets a full buffer, so none is dropped.
            assert dropped(bridge) == 0
            at_pause = (received(bridge, 1), received(bridge, 0))

            await store.restart()
            # QoS 1: never dropped, every message stored once the store is back.
            q1 = await stored(store.url, "q1", MESSAGES)
            assert sorted(set(q1)) == list(range(MESSAGES))
            # QoS 0: every message the broker delivered is either stored or counted as dropped
            # (and here, with the QoS 1 rule pausing intake, none is dropped).
            await wait_until(lambda: received(bridge, 0) == MESSAGES, 30, "every QoS 0 message")
            kept = MESSAGES - int(dropped(bridge))
            q0 = await stored(store.url, "q0", kept)
            assert len(q0) == len(set(q0)) == kept
            assert set(q0) <= set(range(MESSAGES))
            assert dropped(bridge) == 0
            assert sorted(q0) == list(range(MESSAGES))
            await wait_until(lambda: not paused(), 10, "intake to resume")
            assert intake_paused(bridge) == 0
        print(
            f"\nreceived while paused: QoS 1 {int(at_pause[0])}, QoS 0 {int(at_pause[1])} of"
            f" {MESSAGES} each; QoS 0 dropped {int(dropped(bridge))}, stored {len(q0)};"
            f" peak {accumulator.peak_bytes - BUDGET:+d} bytes over the budget"
        )


async def test_qos0_overflow_block_pauses_instead_of_dropping_and_stores_every_qos0(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            mosquitto.url,
            hstream_url=store.url,
            rules=[Q0_RULE],
            buffer_bytes=BUDGET,
            batch_max_bytes=16 * 1024,
            append_timeout=1.0,
            qos0_overflow="block",
        )
        async with running_bridge(settings) as bridge:
            assert bridge.source is not None
            assert bridge.accumulator is not None
            source, accumulator = bridge.source, bridge.accumulator

            def paused() -> bool:
                return source.paused

            store.kill()
            qos0 = numbered("q0", MESSAGES)  # ~0.5 KiB each in the budget: 8x it
            publishing = asyncio.create_task(
                asyncio.to_thread(publish_interleaved, mosquitto, [], qos0)
            )
            await wait_until(paused, 10, "intake to pause while the store is down")
            assert intake_paused(bridge) == 1
            await asyncio.wait_for(publishing, 30)
            assert paused()
            at_pause = received(bridge, 0)
            assert at_pause < MESSAGES  # the rest waits at the broker, not dropped here
            assert dropped(bridge) == 0
            assert accumulator.peak_bytes <= BUDGET + PEAK_SLACK

            await store.restart()
            await wait_until(lambda: received(bridge, 0) == MESSAGES, 30, "every QoS 0 message")
            q0 = await stored(store.url, "q0", MESSAGES)
            assert sorted(q0) == list(range(MESSAGES))
            assert dropped(bridge) == 0
            await wait_until(lambda: not paused(), 10, "intake to resume")
            assert intake_paused(bridge) == 0
        print(
            f"\nQoS 0 received while paused: {int(at_pause)} of {MESSAGES}; all stored after;"
            f" peak {accumulator.peak_bytes - BUDGET:+d} bytes over the budget"
        )
