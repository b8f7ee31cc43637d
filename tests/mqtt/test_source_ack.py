"""MqttSource acks a message only after the handler's awaitable completes successfully."""

import asyncio
import gc
import os
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from bridge.accumulator import Delivery
from bridge.mqtt import MqttSource, _link
from tests.mqtt.collector import Collector, Mode, settings_for
from tests.support.mosquitto import Mosquitto, publish

TOPIC = "ack/t"
ROOT = Path(__file__).resolve().parents[2]


async def _publish(broker: Mosquitto, *payloads: bytes, qos: int = 1) -> None:
    messages = [(TOPIC, p) for p in payloads]
    await asyncio.to_thread(publish, broker.host, broker.port, messages, qos=qos)


async def _after_reconnect(broker: Mosquitto, client_id: str) -> list[bytes]:
    """Resume the session and return what comes before a fresh marker message; Mosquitto
    resends a session's unacked messages before anything published later."""
    collector = Collector("ack")
    async with MqttSource(settings_for(broker, client_id), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: 2})
        await _publish(broker, b"marker")
        await collector.wait_payloads({b"marker"})
    return collector.payloads[: collector.payloads.index(b"marker")]


@pytest.mark.parametrize("qos", [1, 2])
async def test_message_with_unfinished_handler_is_redelivered_to_the_resumed_session(
    mosquitto: Mosquitto, qos: int
) -> None:
    collector = Collector("hold")
    async with MqttSource(settings_for(mosquitto, f"held-{qos}"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: qos})
        await _publish(mosquitto, b"m1", qos=qos)
        await collector.wait_count(1)
        assert source.inflight == 1
    assert await _after_reconnect(mosquitto, f"held-{qos}") == [b"m1"]


@pytest.mark.parametrize("mode", ["ack", "done", "hold-then-release"])
async def test_message_is_acked_once_the_handler_is_done(mosquitto: Mosquitto, mode: str) -> None:
    modes: dict[str, Mode] = {"ack": "ack", "done": "done", "hold-then-release": "hold"}
    collector = Collector(modes[mode])
    async with MqttSource(settings_for(mosquitto, f"acked-{mode}"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: 1})
        await _publish(mosquitto, b"m1", b"m2")
        await collector.wait_count(2)
        collector.release()
        async with asyncio.timeout(10):
            while source.inflight:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.01)
    assert await _after_reconnect(mosquitto, f"acked-{mode}") == []


async def test_failed_handler_drops_the_connection_and_the_message_comes_again(
    mosquitto: Mosquitto,
) -> None:
    collector = Collector("fail")
    async with MqttSource(settings_for(mosquitto, "failing"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: 1})
        await _publish(mosquitto, b"m1")
        await collector.wait_count(1)
        collector.mode = "ack"
        await collector.wait_count(2)
        await source.wait_connected(10)
        assert collector.payloads == [b"m1", b"m1"]
        assert source.reconnects == 1
    assert await _after_reconnect(mosquitto, "failing") == []


CRASHING_BRIDGE = textwrap.dedent(
    """
    import asyncio, sys
    from bridge.mqtt import MqttSettings, MqttSource

    async def main() -> None:
        never = asyncio.get_running_loop().create_future()

        def handler(message):
            print("got", message.payload.decode(), flush=True)
            return never

        settings = MqttSettings(url=sys.argv[1], client_id="crashing")
        async with MqttSource(settings, handler) as source:
            await source.wait_connected(10)
            await source.set_subscriptions({sys.argv[2]: 1})
            print("ready", flush=True)
            await never

    asyncio.run(main())
    """
)


async def test_message_in_flight_when_the_process_is_killed_is_redelivered(
    mosquitto: Mosquitto,
) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_BRIDGE, mosquitto.url, TOPIC,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(20):
            assert await process.stdout.readline() == b"ready\n"
            await _publish(mosquitto, b"m1")
            assert await process.stdout.readline() == b"got m1\n"
    finally:
        process.send_signal(signal.SIGKILL)
        await process.wait()
    assert await _after_reconnect(mosquitto, "crashing") == [b"m1"]


async def test_flush_acks_sends_acks_of_just_completed_handlers_before_exit(
    mosquitto: Mosquitto,
) -> None:
    collector = Collector("hold")
    async with MqttSource(settings_for(mosquitto, "flushed"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: 1})
        await _publish(mosquitto, b"m1", b"m2")
        await collector.wait_count(2)
        collector.release()
        await source.flush_acks()
        assert source.inflight == 0
    assert await _after_reconnect(mosquitto, "flushed") == []


async def test_acks_written_just_before_close_reach_the_broker_before_a_restart(
    mosquitto: Mosquitto, caplog: pytest.LogCaptureFixture
) -> None:
    """A restart reconnects at once with the same client id. The broker must have read the
    acks the old connection wrote last: close waits for it to close the connection after
    DISCONNECT (closing first, 3 of 6 rounds had those messages sent again)."""
    for round_ in range(6):
        collector = Collector("hold")
        async with MqttSource(settings_for(mosquitto, "restarted"), collector) as source:
            await source.wait_connected(10)
            await source.set_subscriptions({TOPIC: 1})
            await _publish(mosquitto, *[b"%d-%04d" % (round_, n) for n in range(500)])
            await collector.wait_count(500)
            collector.release()  # stored: the acks go with the close right after
            await asyncio.sleep(0)
        assert await _after_reconnect(mosquitto, "restarted") == [], f"round {round_}"
    assert "acks still unsent" not in caplog.text


async def test_acks_go_in_receive_order_and_a_long_wait_for_the_oldest_stops_reading(
    mosquitto: Mosquitto, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each PUBACK waits for those of the messages received before it. When UNACKED_LIMIT
    messages wait behind one not stored yet (a broker past its Receive Maximum), the socket is
    not read until half of them are acked."""
    monkeypatch.setattr(_link, "UNACKED_LIMIT", 8)
    collector = Collector("hold")
    async with MqttSource(settings_for(mosquitto, "backlog"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: 1})
        payloads = [b"%03d" % n + b"x" * 4000 for n in range(40)]
        await _publish(mosquitto, *payloads)
        await collector.wait_count(8)
        for future in collector.held[1:]:
            future.set_result(None)  # all stored but the oldest: none may be acked yet
        link = source._link
        assert link is not None
        assert link._backlogged
        assert not link._client._connection._transport.is_reading()
        assert len(collector.messages) < 40
        collector.release()  # the oldest is stored: every ack goes, reading resumes
        collector.mode = "done"
        await collector.wait_count(40)
        async with asyncio.timeout(10):
            while source.inflight:  # noqa: ASYNC110 - a counter, no event to wait on
                await asyncio.sleep(0.01)
        # Every ack written, in order (whether the broker reads them before a reconnect with
        # the same client id replaces this connection is the broker's race, not checked here).
        assert (link.first_ticket, link.waiting_acks, link._backlogged) == (40, 0, False)
        assert link._client._connection._transport.is_reading()
    assert [m.payload[:3] for m in collector.messages] == [b"%03d" % n for n in range(40)]


async def test_a_held_message_costs_the_source_no_object_for_the_cyclic_collector(
    mosquitto: Mosquitto,
) -> None:
    """Every object kept per message in flight is walked by each pass of the cyclic
    collector; with tens of thousands in flight that was a sixth of the bridge's CPU (a
    partial, its bound method and arguments, and an ack-order entry per message). The link
    and source keep ints and one callable per connection instead."""
    count = 400
    deliveries = [Delivery(1, asyncio.get_running_loop()) for _ in range(count + 1)]
    received: list[int] = []

    def handler(message: object) -> Delivery:
        received.append(0)  # ints: nothing for the collector
        return deliveries[len(received) - 1]

    async with MqttSource(settings_for(mosquitto, "gc-count"), handler) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({TOPIC: 1})
        await _publish(mosquitto, b"warm-up")
        async with asyncio.timeout(10):
            while not received:  # noqa: ASYNC110 - a list, no event to wait on
                await asyncio.sleep(0.01)
        gc.collect()
        before = len(gc.get_objects())
        await _publish(mosquitto, *[b"m%d" % i for i in range(count)])
        async with asyncio.timeout(20):
            while len(received) < count + 1:  # noqa: ASYNC110 - a list, no event to wait on
                await asyncio.sleep(0.01)
        gc.collect()
        kept = len(gc.get_objects()) - before
        assert source.inflight == count + 1  # all held, none acknowledged
        assert kept < count // 4, f"{kept} objects kept for {count} messages in flight"
        for delivery in deliveries:
            delivery.record_done()
        assert source.inflight == 0
