"""No acknowledgement without a stored record, under every fault and bad input.

Each scenario runs the real bridge (in-process here; killed with SIGKILL in test_kill.py) between
real Mosquitto and a real store, through an MQTT proxy that records which PUBLISH each PUBACK
acknowledged and a gRPC proxy that refuses, delays or holds calls. Each checks that every
acknowledged message is stored in its stream or as a dead letter (`Ledger.check`), and records
its counts for the table printed at the end of the run.
"""

import asyncio
import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from bridge.hstream.client import HStreamClient
from bridge.hstream.records import EncodedRecord
from bridge.mqtt import MqttError
from bridge.service import Bridge, DeadLetterStreamMissing, PipelineFailed
from bridge.settings import Settings
from tests.faults.conftest import Rig
from tests.faults.ledger import DEAD_LETTERS, number, payload, take_stock
from tests.support.bridge import bridge_settings, running_bridge, wait_until
from tests.support.mosquitto import publish
from tests.support.store import REPO_ROOT

pytestmark = pytest.mark.timeout(120)


def rule(rule_id: str, prefix: str, stream: str, **extra: Any) -> dict[str, Any]:
    return {"id": rule_id, "topic": f"{prefix}/{{dev}}", "stream": stream, "key": "${dev}", **extra}


def rigged(rig: Rig, tmp_path: Path, rules: list[dict[str, Any]], **overrides: Any) -> Settings:
    """Settings for a bridge between the rig's MQTT proxy and its gRPC fault proxy."""
    return bridge_settings(
        tmp_path / "bridge", rig.mqtt.url, hstream_url=rig.faults.url, rules=rules, **overrides
    )


@contextlib.asynccontextmanager
async def bridged(
    rig: Rig, tmp_path: Path, rules: list[dict[str, Any]], **overrides: Any
) -> AsyncIterator[Bridge]:
    settings = rigged(rig, tmp_path, rules, append_error_retries=2, **overrides)
    async with running_bridge(settings) as bridge:
        yield bridge


async def send(rig: Rig, messages: list[tuple[str, bytes]], qos: int = 1) -> None:
    await asyncio.to_thread(publish, rig.broker.host, rig.broker.port, messages, qos=qos)


async def acked(rig: Rig, count: int, timeout: float = 30.0) -> None:
    await wait_until(lambda: len(set(rig.mqtt.acked)) >= count, timeout, f"{count} acks")


# --- defect 1: a refused dead letter was acknowledged --------------------------------------


async def test_an_oversized_payload_is_parked_cut_to_fit_then_acknowledged(
    rig: Rig, tmp_path: Path
) -> None:
    async with bridged(rig, tmp_path, [rule("big", "big", "big")]):
        messages = [("big/d0", payload(0, 2_000_000))] + [
            ("big/d1", payload(n)) for n in range(1, 10)
        ]
        await send(rig, messages)
        await acked(rig, 10)
    ledger = await take_stock("payload over 1 MiB", 10, rig.mqtt.acked, rig.store.url, ["big"])
    assert ledger.dead == [0]
    assert sorted(ledger.stored) == list(range(1, 10))
    (letter,) = [
        r for r in await _read(rig, DEAD_LETTERS) if r.attributes["reason"] == "record_too_large"
    ]
    assert letter.attributes["truncated"] == "true"
    assert letter.attributes["original_size"] == "2000000"
    assert len(letter.payload) < 1 << 20


async def _read(rig: Rig, stream: str) -> list[Any]:
    from tests.support.bridge import read_stream

    return await read_stream(rig.store.url, stream)


async def test_a_record_within_its_framing_of_the_limit_is_parked_not_lost(
    rig: Rig, tmp_path: Path
) -> None:
    limit = 1 << 20
    async with bridged(rig, tmp_path, [rule("edge", "edge", "edge")]) as bridge:
        # Size the payload so the encoded record is 2 bytes under the limit: framed in an
        # append (tag + length) it is over it, which is what the store measures.
        probe = payload(0, limit - 400)
        (out,) = bridge.dry_run("edge/d0", probe)
        assert out.reason is None
        size = len(probe) + (limit - 2 - len(out.data))  # the record: limit - 2 bytes
        (out,) = bridge.dry_run("edge/d0", payload(0, size))
        assert out.reason == "record_too_large"
        assert "is 1048578 bytes in an append" in EncodedRecord.parse(out.data).attributes["error"]
        await send(rig, [("edge/d0", payload(0, size)), ("edge/d0", payload(1))])
        await acked(rig, 2)
    ledger = await take_stock(
        "record 2 B under the limit", 2, rig.mqtt.acked, rig.store.url, ["edge"]
    )
    assert (ledger.dead, ledger.stored) == ([0], [1])


async def test_max_record_bytes_above_1_mib_reaches_the_embedded_store(
    rig: Rig, tmp_path: Path
) -> None:
    settings = bridge_settings(
        tmp_path / "bridge",
        rig.mqtt.url,
        rules=[rule("large", "large", "large")],
        max_record_bytes=2 << 20,
    )
    async with running_bridge(settings) as bridge:
        assert bridge.store is not None
        await send(rig, [("large/d0", payload(0, 1_500_000))])
        await acked(rig, 1)
        ledger = await take_stock(
            "1.5 MB record, limit 2 MiB", 1, rig.mqtt.acked, bridge.store.url, ["large"]
        )
    assert (ledger.stored, ledger.dead) == ([0], [])


async def test_without_auto_create_a_missing_dead_letter_stream_refuses_the_start(
    rig: Rig, tmp_path: Path
) -> None:
    settings = bridge_settings(
        tmp_path / "bridge", rig.mqtt.url, hstream_url=rig.store.url, auto_create_streams=False
    )
    with pytest.raises(DeadLetterStreamMissing, match="bridge_dead_letter does not exist"):
        async with Bridge(settings):
            pass
    command = [
        sys.executable, "-m", "bridge", "run", "--mqtt-url", rig.mqtt.url,
        "--hstream-url", rig.store.url, "--no-auto-create-streams",
        "--data-dir", str(tmp_path / "cli"), "--api-listen", "127.0.0.1:0",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("hstream-bridge: the dead-letter")


async def test_without_auto_create_records_for_a_missing_stream_are_parked(
    rig: Rig, tmp_path: Path
) -> None:
    async with HStreamClient(rig.store.url) as client:
        await client.create_stream(DEAD_LETTERS)
    rules = [rule("nowhere", "nowhere", "missing")]
    async with bridged(rig, tmp_path, rules, auto_create_streams=False):
        await send(rig, [("nowhere/d0", payload(n)) for n in range(5)])
        await acked(rig, 5)
    ledger = await take_stock(
        "stream missing, no auto-create", 5, rig.mqtt.acked, rig.store.url, []
    )
    assert sorted(ledger.dead) == list(range(5))
    assert set(ledger.dead_reasons.values()) == {"stream_not_found"}


async def test_dead_letters_the_store_refuses_are_retried_and_never_acknowledged(
    rig: Rig, tmp_path: Path
) -> None:
    rules = [rule("js", "js", "js", payload="json")]
    rig.faults.fail("Append", code=grpc.StatusCode.INVALID_ARGUMENT, error=207, stream=DEAD_LETTERS)
    async with bridged(rig, tmp_path, rules) as bridge:
        good = [("js/d0", json.dumps({"n": n}).encode()) for n in range(5)]
        bad = [("js/d1", payload(n)) for n in range(100, 105)]  # not JSON: dead letters
        await send(rig, good + bad)
        await wait_until(
            lambda: rig.faults.refused[("Append", grpc.StatusCode.INVALID_ARGUMENT)] >= 3,
            30,
            "dead letters to be refused again and again",
        )
        readiness = await bridge.readiness()
        assert readiness["ready"] is False
        assert readiness["dead_letters"] is False
        assert not {number(p) for p in rig.mqtt.acked if p[:1] != b"{"} & set(range(100, 105))
        rig.faults.clear()
        await wait_until(lambda: len(rig.mqtt.acked) >= 10, 30, "every message to be acked")
        assert (await bridge.readiness())["dead_letters"] is True
    letters = await take_stock(
        "dead-letter stream refuses, then takes (bad half)",
        5,
        [p for p in rig.mqtt.acked if p[:1] != b"{"],
        rig.store.url,
        [],
    )
    assert sorted(letters.dead) == list(range(100, 105))
    assert set(letters.dead_reasons.values()) == {"invalid_json"}


# --- defect 2: a PUBLISH re-sent while in flight -------------------------------------------


async def test_a_publish_resent_while_in_flight_is_stored_and_acknowledged_once(
    rig: Rig, tmp_path: Path
) -> None:
    rig.mqtt.duplicate_publishes(20, delay=0.05)
    rig.faults.delay("Append", 0.3)  # the re-sends arrive while the first copies are in flight
    async with bridged(rig, tmp_path, [rule("dup", "dup", "dup")]):
        await send(rig, [("dup/d0", payload(n)) for n in range(20)])
        await acked(rig, 20)
        await wait_until(lambda: len(rig.mqtt.resent) == 20, 10, "the re-sends")
    ledger = await take_stock(
        "PUBLISH re-sent in flight", 20, rig.mqtt.acked, rig.store.url, ["dup"]
    )
    assert rig.mqtt.stray_acks == 0, "a message was acknowledged twice"
    assert sorted(ledger.stored) == list(range(20))
    assert ledger.duplicates == 0


async def test_packet_ids_reused_in_flight_are_new_messages_acknowledged_in_order(
    rig: Rig, tmp_path: Path
) -> None:
    """Mosquitto 2.0.11 sends past the Receive Maximum and, past 65,535 in flight, reuses the
    id of a message not acknowledged yet (DUP clear); a PUBACK then settles its OLDEST message
    with that id. Here ids cycle through 1..3 and every other message goes to a stream whose
    appends are held: the messages of the free stream are stored first, and their PUBACKs must
    wait (in receive order), or a PUBACK for id 1 would settle the held message 0."""
    rig.mqtt.reuse_packet_ids(3)
    hold = rig.faults.hold("Append", stream="slow", before=True)
    rules = [rule("slow", "slow", "slow"), rule("fast", "fast", "fast")]
    async with bridged(rig, tmp_path, rules):
        topics = ("slow/d0", "fast/d0")
        await send(rig, [(topics[n % 2], payload(n)) for n in range(20)])
        await wait_until(
            lambda: len(rig.mqtt.delivered) == 20, 10, "20 PUBLISHes through the proxy"
        )

        async def fast_stored() -> bool:
            return len(await _read(rig, "fast")) == 10

        await wait_until(fast_stored, 10, "the free stream's 10 records")
        midway = await take_stock(
            "packet ids reused in flight: one stream held", 20, rig.mqtt.acked, rig.store.url,
            ["slow", "fast"],
        )  # fmt: skip
        assert midway.acked == [], "a PUBACK went before the held message received first"
        hold.release()
        await acked(rig, 20)
    ledger = await take_stock(
        "packet ids reused in flight, then released", 20, rig.mqtt.acked, rig.store.url,
        ["slow", "fast"],
    )  # fmt: skip
    assert sorted(ledger.stored) == list(range(20))
    assert [d.packet_id for d in rig.mqtt.delivered[:6]] == [1, 2, 3, 1, 2, 3]
    assert not any(d.dup for d in rig.mqtt.delivered)
    assert [a.payload for a in rig.mqtt.acks] == [d.payload for d in rig.mqtt.delivered]
    assert rig.mqtt.stray_acks == 0


# --- defects 3 and 4: shutdown and supervision ---------------------------------------------


async def test_shutdown_under_a_full_buffer_never_reads_again_and_acks_what_it_flushed(
    rig: Rig, tmp_path: Path
) -> None:
    settings = rigged(
        rig,
        tmp_path,
        [rule("full", "full", "full")],
        buffer_bytes=64 * 1024,
        batch_max_bytes=16 * 1024,
        append_timeout=1.0,
        shutdown_timeout=20.0,
    )
    async with Bridge(settings) as bridge:
        assert bridge.source is not None
        await rig.faults.cut()
        await send(rig, [(f"full/d{n % 4}", payload(n, 1024)) for n in range(600)])
        await wait_until(lambda: bridge.source is not None and bridge.source.paused, 20, "pause")

        def received() -> float:
            value = bridge.metrics.registry.get_sample_value(
                "hstream_bridge_messages_received_total", {"qos": "1"}
            )
            return value or 0.0

        before = received()
        rig.faults.restore()  # the buffer drains below low water during the flush
        assert await bridge.drain(), "the shutdown flush did not finish"
        assert bridge.source.paused, "draining the buffer re-opened intake"
        assert received() == before, "the bridge read messages after the shutdown started"
        stored_now = {number(r.payload) for r in await _read(rig, "full")}
        # Every message stored by the flush is acknowledged before the process would exit.
        await wait_until(lambda: stored_now <= {number(p) for p in rig.mqtt.acked}, 5, "acks")
    ledger = await take_stock(
        "shutdown under a full buffer", 600, rig.mqtt.acked, rig.store.url, ["full"]
    )
    assert len(set(ledger.stored)) == before > 0


async def test_a_pipeline_task_that_dies_stops_the_bridge_and_acks_nothing_unstored(
    rig: Rig, tmp_path: Path
) -> None:
    settings = rigged(rig, tmp_path, [rule("ok", "ok", "ok"), rule("boom", "boom", "boom")])
    async with Bridge(settings) as bridge:
        accumulator = bridge.accumulator
        assert accumulator is not None
        real = accumulator.set_shard_map

        def set_shard_map(state: Any, shard_map: Any) -> None:
            if state.name == "boom":
                raise RuntimeError("injected: a bug while placing records")
            real(state, shard_map)

        accumulator.set_shard_map = set_shard_map  # type: ignore[method-assign]
        await send(rig, [("ok/d0", payload(n)) for n in range(5)])
        await acked(rig, 5)
        await send(rig, [("boom/d0", payload(n)) for n in range(5, 10)])
        with pytest.raises(PipelineFailed, match="injected"):
            await asyncio.wait_for(bridge.run(asyncio.Event()), 30)
        readiness = await bridge.readiness()
        assert readiness["ready"] is False
        assert "failed" in readiness
    ledger = await take_stock(
        "a pipeline task raises", 10, rig.mqtt.acked, rig.store.url, ["ok", "boom"]
    )
    assert sorted(set(ledger.acked)) == list(range(5))


# --- defect 5: poison batches and error bursts ----------------------------------------------


async def test_a_poison_stream_is_parked_while_other_rules_keep_flowing(
    rig: Rig, tmp_path: Path
) -> None:
    rig.faults.fail("Append", code=grpc.StatusCode.INTERNAL, error=0, stream="poison")
    rules = [rule("poison", "p", "poison"), rule("good", "g", "good")]
    async with bridged(rig, tmp_path, rules):
        messages = [("p/d0" if n % 2 else "g/d0", payload(n)) for n in range(40)]
        await send(rig, messages)
        await acked(rig, 40, timeout=60)
    ledger = await take_stock(
        "INTERNAL on every append of one stream",
        40,
        rig.mqtt.acked,
        rig.store.url,
        ["poison", "good"],
    )
    assert sorted(ledger.stored) == list(range(0, 40, 2))
    assert sorted(ledger.dead) == list(range(1, 40, 2))
    assert set(ledger.dead_reasons.values()) == {"append_failed"}


async def test_bursts_of_internal_and_resource_exhausted_are_retried_in_order(
    rig: Rig, tmp_path: Path
) -> None:
    # The first append is slow, so closed batches queue up behind it; the failures then hit a
    # shard with batches waiting, where a retry that let the next batch pass would reorder.
    rig.faults.delay("Append", 0.3, stream="burst", times=1)
    rig.faults.fail("Append", code=grpc.StatusCode.INTERNAL, error=0, times=2)
    rig.faults.fail("Append", code=grpc.StatusCode.RESOURCE_EXHAUSTED, times=2)
    rig.faults.fail("Append", code=grpc.StatusCode.UNAVAILABLE, times=3)
    rules = [rule("burst", "burst", "burst")]
    async with bridged(rig, tmp_path, rules, stream_shards=2, batch_max_records=10):
        await send(rig, [(f"burst/d{n % 5}", payload(n)) for n in range(500)])
        await acked(rig, 500, timeout=60)
    ledger = await take_stock(
        "INTERNAL x2, RESOURCE_EXHAUSTED x2, UNAVAILABLE x3",
        500,
        rig.mqtt.acked,
        rig.store.url,
        ["burst"],
    )
    assert ledger.dead == []
    assert sorted(set(ledger.stored)) == list(range(500))
    by_device: dict[int, list[int]] = {}
    for n in ledger.stored:
        by_device.setdefault(n % 5, []).append(n)
    for device, numbers in by_device.items():
        assert numbers == sorted(numbers), f"device {device} stored out of order"


# --- defect 6: a SUBACK that never comes ----------------------------------------------------


async def test_a_subscription_whose_suback_never_came_is_sent_again_until_confirmed(
    rig: Rig, tmp_path: Path
) -> None:
    from rules import Rule

    async with bridged(rig, tmp_path, []) as bridge:
        source = bridge.source
        assert source is not None
        # Two: the SUBSCRIBE is sent again at once, and its SUBACK may come before the API's
        # answer is read (with one dropped, `unconfirmed` could already be empty below).
        rig.mqtt.drop_subacks(2)
        with pytest.raises(MqttError, match="not confirmed yet"):  # the API answers 502
            await bridge.create_rule(Rule.model_validate(rule("late", "late", "late")))
        assert bridge.get_rule("late") is not None, "the change stands"
        assert source.unconfirmed == {"late/+": 1}
        await wait_until(lambda: not source.unconfirmed, 40, "the subscription to be confirmed")
        filters = [f for s in rig.mqtt.subscribes for f, _ in s.filters if f == "late/+"]
        assert len(filters) >= 3, "the SUBSCRIBE was not sent again"
        await send(rig, [("late/d0", payload(n)) for n in range(5)])
        await acked(rig, 5)
    await take_stock("SUBACK never came", 5, rig.mqtt.acked, rig.store.url, ["late"])


async def test_a_rule_made_while_intake_is_paused_answers_at_once_and_subscribes_on_resume(
    rig: Rig, tmp_path: Path
) -> None:
    from rules import Rule

    overrides = {"buffer_bytes": 64 * 1024, "batch_max_bytes": 16 * 1024, "append_timeout": 1.0}
    async with bridged(rig, tmp_path, [rule("busy", "busy", "busy")], **overrides) as bridge:
        source = bridge.source
        assert source is not None
        # Appends to "busy" held before the store: the budget fills and intake pauses, while
        # the config stream (where the rule change goes) still answers.
        rig.faults.hold("Append", stream="busy", before=True)
        await send(rig, [(f"busy/d{n % 4}", payload(n, 1024)) for n in range(300)])
        await wait_until(lambda: source.paused, 20, "intake to pause")
        started = asyncio.get_running_loop().time()
        await bridge.create_rule(Rule.model_validate(rule("later", "later", "later")))
        # The SUBACK cannot be read while paused: the change must not wait for it (it took
        # the whole SUBACK time-out, 10 s, and answered 502).
        assert asyncio.get_running_loop().time() - started < 1.0
        assert source.unconfirmed == {"later/+": 1}
        rig.faults.clear()
        await wait_until(lambda: not source.unconfirmed, 30, "the subscription on resume")
        await send(rig, [("later/d0", payload(n)) for n in range(300, 310)])
        await acked(rig, 310, timeout=60)
    await take_stock(
        "rule made while intake paused", 310, rig.mqtt.acked, rig.store.url, ["busy", "later"]
    )
