"""The bridge with `--buffer disk`, in-process, between real Mosquitto and a real store.

Messages are acknowledged once their records are fsync'd to the local buffer, so an HStreamDB
outage costs the broker nothing; the forwarder stores them, in per-key order, once HStreamDB is
back. A full disk pauses intake and never acknowledges an unwritten record.
"""

import asyncio
import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.faults.conftest import Rig
from tests.faults.ledger import number, payload, take_stock
from tests.support.bridge import bridge_settings, read_stream, running_bridge, wait_until
from tests.support.mosquitto import publish

pytestmark = pytest.mark.timeout(120)

RULE = {"id": "tele", "topic": "tele/{dev}", "stream": "tele", "key": "${dev}"}


def settings(rig: Rig, data_dir: Path, **overrides: Any) -> Any:
    return bridge_settings(
        data_dir, rig.mqtt.url, hstream_url=rig.faults.url, rules=[RULE], buffer="disk",
        append_timeout=1.0, **overrides,
    )  # fmt: skip


def per_device_in_order(numbers: list[int], devices: int) -> None:
    seen: set[int] = set()
    last: dict[int, int] = {}
    for n in numbers:
        if n in seen:
            continue
        seen.add(n)
        device = n % devices
        assert n > last.get(device, -1), f"device {device}: {n} stored after {last[device]}"
        last[device] = n


async def test_an_outage_is_ridden_out_on_disk_with_every_message_acked_at_once(
    rig: Rig, tmp_path: Path
) -> None:
    await rig.faults.cut()  # HStreamDB is down from the start
    async with running_bridge(settings(rig, tmp_path / "bridge")) as bridge:
        disk = bridge.disk
        assert disk is not None
        messages = [(f"tele/d{n % 10}", payload(n)) for n in range(3000)]
        await asyncio.to_thread(publish, rig.broker.host, rig.broker.port, messages)
        # Acknowledged while HStreamDB is down: they are on disk.
        await wait_until(lambda: len(set(rig.mqtt.acked)) == 3000, 30, "every ack")
        assert disk.backlog_records == 3000
        readiness = await bridge.readiness()
        assert readiness["ready"] is True
        assert readiness["hstream"] is False
        assert readiness["buffer"]["backlog_records"] == 3000
        assert await read_stream(rig.store.url, "tele") == []
        rig.faults.restore()
        await wait_until(lambda: disk.backlog_records == 0, 60, "the backlog to be forwarded")
        await wait_until(lambda: disk.committed_seq == 3000, 10, "the ledger")
    ledger = await take_stock("disk buffer: outage", 3000, rig.mqtt.acked, rig.store.url, ["tele"])
    assert sorted(set(ledger.stored)) == list(range(3000))
    per_device_in_order(ledger.stored, 10)


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` at `path`: a disk that really fills up (needs root, as CI runs)."""
    path.mkdir(parents=True)
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_a_full_disk_pauses_intake_acks_nothing_unwritten_and_recovers(
    rig: Rig, tmp_path: Path
) -> None:
    with small_disk(tmp_path / "disk", "2m") as disk_dir:
        await rig.faults.cut()
        async with running_bridge(settings(rig, disk_dir)) as bridge:
            disk, source = bridge.disk, bridge.source
            assert disk is not None
            assert source is not None
            messages = [(f"tele/d{n % 10}", payload(n, 1000)) for n in range(4000)]  # ~4 MB
            publisher = asyncio.create_task(
                asyncio.to_thread(publish, rig.broker.host, rig.broker.port, messages)
            )
            await wait_until(lambda: disk.disk_error is not None, 30, "the disk to fill up")
            await wait_until(lambda: source.paused, 10, "intake to pause")
            readiness = await bridge.readiness()
            assert readiness["ready"] is False
            assert readiness["buffer"]["accepting"] is False
            assert "ENOSPC" in readiness["buffer"]["error"]
            acked = {number(p) for p in rig.mqtt.acked}
            assert len(acked) <= disk.durable_seq < 4000, "acked more than was written"
            rig.faults.restore()  # forwarding frees the disk, intake resumes
            await publisher
            await wait_until(lambda: len(set(rig.mqtt.acked)) == 4000, 60, "every ack")
            await wait_until(lambda: disk.backlog_records == 0, 60, "the backlog")
    ledger = await take_stock(
        "disk buffer: disk full", 4000, rig.mqtt.acked, rig.store.url, ["tele"]
    )
    assert sorted(set(ledger.stored)) == list(range(4000))
    per_device_in_order(ledger.stored, 10)
