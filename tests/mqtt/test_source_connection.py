"""Reconnects after broker restarts, pausing without losing the session, TLS."""

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bridge.mqtt import ConnectRefused, Message, MqttSource
from tests.mqtt.collector import Collector, numbered, settings_for
from tests.support.mosquitto import Mosquitto, TlsFiles, publish


async def test_broker_restart_reconnects_and_loses_no_qos1_message(mosquitto: Mosquitto) -> None:
    collector = Collector("hold")  # nothing acked before the restart
    changes: list[bool] = []
    async with MqttSource(settings_for(mosquitto, "restart"), collector) as source:
        source.on_connection_change = changes.append
        await source.wait_connected(10)
        await source.set_subscriptions({"restart/#": 1})
        first = numbered("restart/t", 0, 300)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, first)
        await collector.wait_count(300)

        await asyncio.to_thread(mosquitto.restart)  # saves and reloads the session
        second = numbered("restart/t", 300, 600)
        await source.wait_connected(10)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, second)
        await collector.wait_payloads({p for _, p in first + second})
        collector.release()
        assert source.reconnects == 1
    assert changes == [False, True, False]
    # The 300 unacked before the restart came again; the rest came once, in order.
    again = collector.payloads[300:]
    assert again == [p for _, p in first + second]


async def test_broker_that_lost_its_sessions_gets_the_subscriptions_again(
    mosquitto: Mosquitto,
) -> None:
    collector = Collector("ack")
    async with MqttSource(settings_for(mosquitto, "amnesia"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"amnesia/t": 1})
        await asyncio.to_thread(mosquitto.stop)
        for path in mosquitto.persistence_dir.iterdir():
            path.unlink()
        await asyncio.to_thread(mosquitto.start)
        await source.wait_connected(10)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("amnesia/t", b"x")])
        await collector.wait_payloads({b"x"})
        assert source.reconnects == 1


async def test_source_started_before_the_broker_connects_when_it_comes_up(
    mosquitto: Mosquitto,
) -> None:
    mosquitto.stop()
    async with MqttSource(settings_for(mosquitto, "late"), Collector()) as source:
        assert not source.connected
        await asyncio.sleep(0.3)  # a few refused attempts
        await asyncio.to_thread(mosquitto.start)
        await source.wait_connected(10)
        assert source.reconnects == 0  # the first connection is not a reconnect


def _receive_queue_bytes(broker_port: int) -> int:
    """Bytes waiting unread in this machine's sockets connected to `broker_port`."""
    total = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        remote_port = int(fields[2].split(":")[1], 16)
        rx_queue = int(fields[4].split(":")[1], 16)
        if remote_port == broker_port:
            total += rx_queue
    return total


async def test_paused_source_stops_reading_and_keeps_its_session_past_twice_the_keepalive(
    mosquitto: Mosquitto,
) -> None:
    collector = Collector("ack")
    changes: list[bool] = []
    keepalive = 1.0
    settings = settings_for(mosquitto, "paused", keepalive=keepalive, receive_maximum=65535)
    async with MqttSource(settings, collector) as source:
        source.on_connection_change = changes.append
        await source.wait_connected(10)
        await source.set_subscriptions({"paused/t": 1})
        source.pause()
        paused_at = time.monotonic()
        messages = [("paused/t", b"%d|" % i + b"x" * 4000) for i in range(1500)]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        # The kernel buffers what the broker sent: the process is not reading the socket.
        assert _receive_queue_bytes(mosquitto.port) > 64 * 1024
        await asyncio.sleep(max(0.0, paused_at + 2.5 * keepalive - time.monotonic()))
        assert collector.messages == []
        assert source.connected

        source.resume()
        await collector.wait_count(len(messages))
        assert collector.payloads == [p for _, p in messages]
        assert source.reconnects == 0
        assert changes == []
    assert "exceeded timeout" not in mosquitto.log_tail(200)


async def test_pause_during_a_burst_holds_messages_already_read_until_resume(
    mosquitto: Mosquitto,
) -> None:
    collector = Collector("ack")
    sources: list[MqttSource] = []

    def pause_every_100(message: Message) -> None:
        collector(message)
        if len(collector.messages) % 100 == 0:
            sources[0].pause()
            asyncio.get_running_loop().call_later(0.01, sources[0].resume)

    async with MqttSource(settings_for(mosquitto, "burst"), pause_every_100) as source:
        sources.append(source)
        await source.wait_connected(10)
        await source.set_subscriptions({"burst/t": 1})
        messages = numbered("burst/t", 0, 2000)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        await collector.wait_count(len(messages))
    assert collector.payloads == [p for _, p in messages]


@pytest.fixture
def tls_broker(tmp_path: Path) -> Iterator[Mosquitto]:
    tls = TlsFiles(tmp_path / "tls", require_client_cert=True).generate()
    with Mosquitto(tmp_path / "broker", tls=tls) as broker:
        yield broker


async def test_tls_with_client_certificate_receives_messages(tls_broker: Mosquitto) -> None:
    tls = tls_broker.tls
    assert tls is not None
    collector = Collector("ack")
    settings = settings_for(
        tls_broker,
        "tls",
        url=tls_broker.tls_url,
        ca_file=tls.ca_file,
        cert_file=tls.client_cert,
        key_file=tls.client_key,
    )
    async with MqttSource(settings, collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"tls/t": 1})
        await asyncio.to_thread(publish, tls_broker.host, tls_broker.port, [("tls/t", b"x")])
        await collector.wait_payloads({b"x"})


async def test_tls_with_an_unknown_ca_does_not_connect(tls_broker: Mosquitto) -> None:
    tls = tls_broker.tls
    assert tls is not None
    settings = settings_for(
        tls_broker,
        "tls-bad",
        url=tls_broker.tls_url,
        cert_file=tls.client_cert,
        key_file=tls.client_key,
    )  # no ca_file: the system CAs do not know the test CA
    async with MqttSource(settings, Collector()) as source:
        with pytest.raises(TimeoutError):
            await source.wait_connected(0.5)


@pytest.mark.parametrize("protocol", [5, 4])
async def test_wrong_password_is_refused_at_start_and_right_one_connects(
    password_broker: Mosquitto, protocol: int
) -> None:
    broker = password_broker
    wrong = settings_for(broker, "auth", protocol=protocol, username="bridge", password="x")
    with pytest.raises(ConnectRefused) as refused:
        async with MqttSource(wrong, Collector()):
            pass
    assert refused.value.permanent
    right = settings_for(broker, "auth", protocol=protocol, username="bridge", password="secret")
    async with MqttSource(right, Collector()) as source:
        await source.wait_connected(10)
