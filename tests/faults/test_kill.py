"""kill -9 of the bridge while a fault holds work in flight: nothing acknowledged is lost.

The bridge runs as its own process between the MQTT proxy and the gRPC fault proxy. A fault
keeps records in flight (appends held before they reach the store, answers withheld after the
store took them - which shows what may repeat -, a dead-letter stream that refuses, one stream
failing with INTERNAL, HStreamDB unreachable), then the bridge is killed with
SIGKILL. At that instant every message the proxy saw acknowledged must be in the store; then the
fault is lifted, the bridge restarted with the same client id, and every message must arrive
(the broker redelivers what was not acknowledged).
"""

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import pytest

from tests.faults.conftest import Rig
from tests.faults.ledger import DEAD_LETTERS, number, payload, take_stock
from tests.support.bridge import BridgeProcess, read_stream, wait_until
from tests.support.mosquitto import publish

pytestmark = pytest.mark.timeout(180)

TOTAL = 300
CONFIG = """
[[rules]]
id = "tele"
topic = "tele/{dev}"
stream = "tele"
key = "${dev}"

[[rules]]
id = "js"
topic = "js/{dev}"
stream = "js"
key = "${dev}"
payload = "json"
"""

Fault = Callable[[Rig], Awaitable[Callable[[], Awaitable[bool]]]]


def all_kept(rig: Rig, count: int) -> Callable[[], Awaitable[bool]]:
    """Whether messages 0..count-1 are all in the stream or the dead-letter stream."""

    async def kept() -> bool:
        numbers = set()
        for stream in ("tele", DEAD_LETTERS):
            for record in await read_stream(rig.store.url, stream):
                assert isinstance(record.payload, bytes)
                numbers.add(number(record.payload))
        return numbers >= set(range(count))

    return kept


async def held_appends(rig: Rig) -> Callable[[], Awaitable[bool]]:
    hold = rig.faults.hold("Append", stream="tele", before=True)

    async def in_flight() -> bool:
        return hold.held >= 1

    return in_flight


async def held_answers(rig: Rig) -> Callable[[], Awaitable[bool]]:
    """The store has stored the batch; the bridge has not heard (what may repeat)."""
    hold = rig.faults.hold("Append", stream="tele")

    async def in_flight() -> bool:
        return hold.held >= 1 and rig.faults.appended["tele"] >= 1

    return in_flight


async def refused_dead_letters(rig: Rig) -> Callable[[], Awaitable[bool]]:
    rig.faults.fail("Append", code=grpc.StatusCode.INVALID_ARGUMENT, error=207, stream=DEAD_LETTERS)

    async def in_flight() -> bool:
        return rig.faults.refused[("Append", grpc.StatusCode.INVALID_ARGUMENT)] >= 3

    return in_flight


async def internal_errors(rig: Rig) -> Callable[[], Awaitable[bool]]:
    rig.faults.fail("Append", code=grpc.StatusCode.INTERNAL, error=0, stream="tele")

    async def in_flight() -> bool:
        return rig.faults.refused[("Append", grpc.StatusCode.INTERNAL)] >= 2

    return in_flight


async def store_unreachable(rig: Rig) -> Callable[[], Awaitable[bool]]:
    await rig.faults.cut()

    async def in_flight() -> bool:
        return (
            rig.faults.refused[("Append", grpc.StatusCode.UNAVAILABLE)]
            + rig.faults.refused[("ListShards", grpc.StatusCode.UNAVAILABLE)]
            >= 2
        )

    return in_flight


@pytest.mark.parametrize(
    "fault",
    [held_appends, held_answers, refused_dead_letters, internal_errors, store_unreachable],
    ids=["appends-held", "answers-held", "dead-letters-refused", "internal-errors", "unreachable"],
)
async def test_kill_9_while_a_fault_holds_work_in_flight_loses_nothing(
    rig: Rig, tmp_path: Path, fault: Fault
) -> None:
    config = tmp_path / "bridge.toml"
    config.write_text(CONFIG)
    args = [
        "--mqtt-url", rig.mqtt.url, "--hstream-url", rig.faults.url, "--client-id", "kill-test",
        "--config", str(config), "--retry-backoff-min", "0.05", "--retry-backoff-max", "0.5",
        "--append-error-retries", "1000", "--append-timeout", "2",
    ]  # fmt: skip
    bridge = BridgeProcess(tmp_path / "bridge", args)
    await bridge.start()
    try:
        in_flight = await fault(rig)
        good = [(f"tele/d{n % 7}", payload(n)) for n in range(TOTAL)]
        bad = [(f"js/d{n % 3}", payload(n)) for n in range(TOTAL, TOTAL + 30)]  # not JSON
        await asyncio.to_thread(publish, rig.broker.host, rig.broker.port, good + bad)
        await wait_until(in_flight, 30, "the fault to hold work in flight")
        bridge.kill()
        at_kill = await take_stock(
            f"kill -9, {fault.__name__}: at the kill", TOTAL + 30, rig.mqtt.acked, rig.store.url,
            ["tele"],
        )  # fmt: skip
        assert len(set(at_kill.acked)) < TOTAL + 30, "the fault held nothing back"
        rig.faults.clear()
        rig.faults.restore()
        await bridge.start()

        await wait_until(all_kept(rig, TOTAL + 30), 60, "every message after the restart")
        await wait_until(
            lambda: len(set(rig.mqtt.acked)) >= TOTAL + 30, 30, "every message to be acked"
        )
        assert await bridge.terminate() == 0
    finally:
        if bridge.process is not None and bridge.process.poll() is None:
            bridge.kill()
    ledger = await take_stock(
        f"kill -9, {fault.__name__}, restart", TOTAL + 30, rig.mqtt.acked, rig.store.url, ["tele"]
    )
    assert sorted(set(ledger.stored)) == list(range(TOTAL))
    assert sorted(set(ledger.dead)) == list(range(TOTAL, TOTAL + 30))
    print(
        f"\nkill -9 with {fault.__name__}: {len(set(at_kill.acked))} acked and "
        f"{len(set(at_kill.stored))} stored at the kill; {ledger.duplicates} duplicates after"
    )


def buffered(directory: Path) -> set[int]:
    """The messages whose records are in the disk buffer's segments (read as a restart would)."""
    from bridge.buffer import log
    from bridge.hstream.records import EncodedRecord

    out: set[int] = set()
    for segment in log.segments(directory):
        for stored in log.read_segment(segment):
            out.add(number(EncodedRecord.parse(stored.data).payload))
    return out


async def while_publishing(rig: Rig) -> Callable[[], Awaitable[bool]]:
    async def in_flight() -> bool:
        return len(rig.mqtt.acked) >= 100

    return in_flight


@pytest.mark.parametrize(
    "fault",
    [while_publishing, held_answers, store_unreachable],
    ids=["publishing", "answers-held", "unreachable"],
)
async def test_kill_9_with_the_disk_buffer_loses_nothing_acknowledged(
    rig: Rig, tmp_path: Path, fault: Fault
) -> None:
    """With --buffer disk an ack follows the local fsync: at the kill, every acknowledged
    message is in HStreamDB or in the buffer's files, and after the restart all are stored."""
    config = tmp_path / "bridge.toml"
    config.write_text(CONFIG)
    args = [
        "--mqtt-url", rig.mqtt.url, "--hstream-url", rig.faults.url, "--client-id", "kill-disk",
        "--config", str(config), "--retry-backoff-min", "0.05", "--retry-backoff-max", "0.5",
        "--append-timeout", "2", "--buffer", "disk",
    ]  # fmt: skip
    bridge = BridgeProcess(tmp_path / "bridge", args)
    await bridge.start()
    total = 3000
    try:
        in_flight = await fault(rig)
        good = [(f"tele/d{n % 7}", payload(n)) for n in range(total)]
        bad = [(f"js/d{n % 3}", payload(n)) for n in range(total, total + 30)]  # not JSON
        publisher = asyncio.create_task(
            asyncio.to_thread(publish, rig.broker.host, rig.broker.port, good + bad)
        )
        await wait_until(in_flight, 30, "work in flight")
        bridge.kill()
        at_kill = await take_stock(
            f"disk buffer, kill -9, {fault.__name__}: at the kill", total + 30, rig.mqtt.acked,
            rig.store.url, ["tele"], record=False, check=False,
        )  # fmt: skip
        on_disk = buffered(tmp_path / "bridge" / "buffer")
        lost = at_kill.lost - on_disk
        assert not lost, f"acknowledged, in neither HStreamDB nor the buffer: {sorted(lost)[:20]}"
        await publisher
        rig.faults.clear()
        rig.faults.restore()
        await bridge.start()

        await wait_until(all_kept(rig, total + 30), 60, "every message after the restart")
        assert await bridge.terminate() == 0
    finally:
        if bridge.process is not None and bridge.process.poll() is None:
            bridge.kill()
    ledger = await take_stock(
        f"disk buffer, kill -9, {fault.__name__}, restart", total + 30, rig.mqtt.acked,
        rig.store.url, ["tele"],
    )  # fmt: skip
    assert sorted(set(ledger.stored)) == list(range(total))
    print(
        f"\ndisk buffer, kill -9 {fault.__name__}: {len(set(at_kill.acked))} acked, "
        f"{len(set(at_kill.stored))} stored, {len(on_disk)} on disk at the kill; "
        f"{ledger.duplicates} duplicates after"
    )
