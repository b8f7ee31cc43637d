"""The fault-injection MQTT proxy (tests/support/mqtt_proxy.py) against a real Mosquitto, with a
paho-mqtt subscriber behind it, for MQTT 3.1.1 and 5."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.support.mosquitto import Mosquitto, publish
from tests.support.mqtt_proxy import MalformedPacket, MqttProxy, PacketSplitter, Subscribe

TOPIC = "faults/t"
PROTOCOLS = [pytest.param(4, id="mqtt311"), pytest.param(5, id="mqtt5")]


class Subscriber:
    """A paho-mqtt client in its own thread that records what reaches it."""

    def __init__(
        self, port: int, *, protocol: int, manual_ack: bool = False, client_id: str = ""
    ) -> None:
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=paho.MQTTv5 if protocol == 5 else paho.MQTTv311,
            manual_ack=manual_ack,
        )
        self.protocol, self.port = protocol, port
        self.messages: list[paho.MQTTMessage] = []
        self.subacked: list[int] = []  # mids whose SUBACK arrived
        self.connects = self.disconnects = 0
        self.client.on_message = lambda c, u, message: self.messages.append(message)
        self.client.on_subscribe = lambda c, u, mid, *a: self.subacked.append(mid)
        self.client.on_connect = lambda *a: setattr(self, "connects", self.connects + 1)
        self.client.on_disconnect = lambda *a: setattr(self, "disconnects", self.disconnects + 1)

    def start(self) -> None:
        self.client.connect_async("127.0.0.1", self.port, keepalive=60)
        self.client.loop_start()

    def subscribe(self, topic: str, *, qos: int = 1, subscription_id: int | None = None) -> int:
        properties = None
        if subscription_id is not None:
            properties = Properties(PacketTypes.SUBSCRIBE)  # type: ignore[no-untyped-call]
            properties.SubscriptionIdentifier = subscription_id
        rc, mid = self.client.subscribe(topic, qos=qos, properties=properties)
        assert rc == paho.MQTT_ERR_SUCCESS
        assert mid is not None
        return mid

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


async def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.01)


async def subscribed(subscriber: Subscriber, topic: str, **kwargs: int) -> int:
    await wait_for(lambda: subscriber.connects == 1, "the subscriber to connect")
    mid = subscriber.subscribe(topic, **kwargs)
    await wait_for(lambda: mid in subscriber.subacked, "the SUBACK")
    return mid


async def publish_to(broker: Mosquitto, payloads: list[bytes], qos: int = 1) -> None:
    messages = [(TOPIC, payload) for payload in payloads]
    await asyncio.to_thread(publish, broker.host, broker.port, messages, qos=qos, timeout=10)


def test_splitter_cuts_packets_however_the_bytes_arrive() -> None:
    connect = bytes([0x10, 16, 0, 4]) + b"MQTT" + bytes([5, 2, 0, 60, 0, 0, 3]) + b"abc"
    publish_packet = bytes([0x32, 0xCD, 0x01, 0, 1]) + b"t" + bytes([0, 7]) + b"x" * 200
    stream = connect + publish_packet + b"\xc0\x00" + publish_packet
    expected = [connect, publish_packet, b"\xc0\x00", publish_packet]

    byte_by_byte = PacketSplitter()
    assert [p for i in range(len(stream)) for p in byte_by_byte.feed(stream[i : i + 1])] == expected
    assert PacketSplitter().feed(stream) == expected
    in_two = PacketSplitter()
    assert in_two.feed(stream[:3]) == []  # ends inside the 2-byte remaining length
    assert in_two.feed(stream[3:]) == expected
    with pytest.raises(MalformedPacket):
        PacketSplitter().feed(b"\x30\xff\xff\xff\xff\x01")


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_acked_payloads_are_recorded(mosquitto: Mosquitto, protocol: int) -> None:
    payloads = [f"m{i}".encode() for i in range(100)]
    async with MqttProxy(mosquitto.host, mosquitto.port) as proxy:
        subscriber = Subscriber(proxy.port, protocol=protocol)
        subscriber.start()
        try:
            # MQTT 5: a subscription identifier makes every PUBLISH carry a property.
            mid = await subscribed(subscriber, TOPIC, subscription_id=7)
            await publish_to(mosquitto, payloads)
            await wait_for(lambda: len(proxy.acked) == len(payloads), "every PUBACK")
        finally:
            subscriber.close()

    assert proxy.acked == payloads
    assert [m.payload for m in subscriber.messages] == payloads  # forwarded unchanged
    assert [d.payload for d in proxy.delivered] == payloads
    assert {(d.qos, d.dup, d.topic, d.connection) for d in proxy.delivered} == {
        (1, False, TOPIC, 0)
    }
    assert [d.packet_id for d in proxy.delivered] == [m.mid for m in subscriber.messages]
    assert proxy.stray_acks == 0
    assert proxy.acks_forwarded == len(payloads)
    assert set(proxy.acks_per_publish.values()) == {1}
    assert proxy.subscribes == [Subscribe(0, mid, ((TOPIC, 1),))]
    assert [(s.packet_id, s.reason_codes, s.dropped) for s in proxy.subacks] == [
        (mid, b"\x01", False)
    ]
    assert proxy.errors == []


@pytest.mark.parametrize("protocol", PROTOCOLS)
async def test_duplicated_publish_and_its_second_ack_is_stray(
    mosquitto: Mosquitto, protocol: int
) -> None:
    # A second, fault-free proxy between this one and the broker sees what reaches the broker.
    async with (
        MqttProxy(mosquitto.host, mosquitto.port) as sniffer,
        MqttProxy(sniffer.host, sniffer.port) as proxy,
    ):
        subscriber = Subscriber(proxy.port, protocol=protocol, manual_ack=True)
        subscriber.start()
        try:
            await subscribed(subscriber, TOPIC)
            proxy.duplicate_publishes(1, delay=0.05)
            await publish_to(mosquitto, [b"one"])
            await wait_for(lambda: len(subscriber.messages) == 2, "the PUBLISH and its copy")
            first, second = subscriber.messages
            assert (first.mid, first.dup, first.payload) == (second.mid, False, b"one")
            assert second.dup
            assert [(r.packet_id, r.dup) for r in proxy.resent] == [(first.mid, True)]

            subscriber.client.ack(first.mid, 1)
            subscriber.client.ack(second.mid, 1)
            await wait_for(lambda: len(proxy.acks) == 2, "both PUBACKs")
            # This SUBACK comes back only once the SUBSCRIBE, sent after both PUBACKs, went by.
            mid = subscriber.subscribe("faults/other")
            await wait_for(lambda: mid in subscriber.subacked, "the second SUBACK")
        finally:
            subscriber.close()

    assert [(a.packet_id, a.stray) for a in proxy.acks] == [(first.mid, False), (first.mid, True)]
    assert proxy.stray_acks == 1
    assert proxy.acked == [b"one"]
    assert proxy.acks_per_publish[b"one"] == 2
    assert proxy.acks_forwarded == 1
    assert [(a.packet_id, a.stray) for a in sniffer.acks] == [(first.mid, False)]
    assert len(subscriber.messages) == 2  # the proxy resends once, the broker never does
    assert proxy.errors == sniffer.errors == []


async def test_publish_acked_before_the_delay_is_not_duplicated(mosquitto: Mosquitto) -> None:
    async with MqttProxy(mosquitto.host, mosquitto.port) as proxy:
        subscriber = Subscriber(proxy.port, protocol=5)
        subscriber.start()
        try:
            await subscribed(subscriber, TOPIC)
            proxy.duplicate_publishes(1, delay=0.5)
            await publish_to(mosquitto, [b"one"])
            await wait_for(lambda: proxy.acked == [b"one"], "the PUBACK")
            # The proxy forwarded the PUBLISH before this point: wait past its resend time.
            await asyncio.sleep(0.6)
        finally:
            subscriber.close()
    assert proxy.resent == []
    assert [m.payload for m in subscriber.messages] == [b"one"]


@pytest.mark.parametrize("qos", [1, 2])
async def test_held_acks_reach_the_broker_on_release(mosquitto: Mosquitto, qos: int) -> None:
    async with (
        MqttProxy(mosquitto.host, mosquitto.port) as sniffer,
        MqttProxy(sniffer.host, sniffer.port) as proxy,
    ):
        subscriber = Subscriber(proxy.port, protocol=5)
        subscriber.start()
        try:
            await subscribed(subscriber, TOPIC, qos=qos)
            proxy.hold_acks()
            await publish_to(mosquitto, [b"one"], qos=qos)
            await wait_for(lambda: proxy.acked == [b"one"], "the ack")
            mid = subscriber.subscribe("faults/other")  # a round trip after the ack
            await wait_for(lambda: mid in subscriber.subacked, "the second SUBACK")
            assert (sniffer.acks, proxy.acks_forwarded) == ([], 0)
            # paho hands a QoS 2 message over at PUBREL, which waits for the PUBREC.
            assert len(subscriber.messages) == (1 if qos == 1 else 0)

            assert proxy.release_acks() == 1
            await wait_for(lambda: sniffer.acked == [b"one"], "the released ack")
            await wait_for(lambda: len(subscriber.messages) == 1, "the message")
        finally:
            subscriber.close()
    assert [a.kind for a in proxy.acks] == ["PUBACK" if qos == 1 else "PUBREC"]
    assert proxy.acks_forwarded == 1
    assert proxy.errors == sniffer.errors == []


async def test_dropped_suback_never_reaches_the_client(mosquitto: Mosquitto) -> None:
    async with MqttProxy(mosquitto.host, mosquitto.port) as proxy:
        subscriber = Subscriber(proxy.port, protocol=5)
        subscriber.start()
        try:
            await wait_for(lambda: subscriber.connects == 1, "the subscriber to connect")
            proxy.drop_subacks(1)
            lost = subscriber.subscribe("faults/a")
            answered = subscriber.subscribe("faults/b")
            # Mosquitto answers in order: once the second SUBACK is in, the first would be too.
            await wait_for(lambda: answered in subscriber.subacked, "the second SUBACK")
            with pytest.raises(AssertionError, match="timed out"):
                await wait_for(lambda: lost in subscriber.subacked, "the first SUBACK", 0.2)
        finally:
            subscriber.close()
    assert subscriber.subacked == [answered]
    assert [(s.packet_id, s.dropped) for s in proxy.subacks] == [(lost, True), (answered, False)]
    assert [s.filters for s in proxy.subscribes] == [(("faults/a", 1),), (("faults/b", 1),)]


async def test_cut_drops_both_sides_and_the_client_can_come_back(mosquitto: Mosquitto) -> None:
    watcher = Subscriber(mosquitto.port, protocol=5)  # directly on the broker
    watcher.start()
    async with MqttProxy(mosquitto.host, mosquitto.port) as proxy:
        subscriber = Subscriber(proxy.port, protocol=5, client_id="cut-me")
        subscriber.client.will_set("faults/will", b"gone")  # sent by the broker on a lost link
        subscriber.start()
        try:
            await subscribed(watcher, "faults/will")
            await wait_for(lambda: proxy.open_connections == 1, "the connection")
            await wait_for(lambda: subscriber.connects == 1, "the CONNACK")
            await proxy.cut()
            assert proxy.open_connections == 0
            await wait_for(lambda: subscriber.disconnects == 1, "the client to see the cut")
            await wait_for(lambda: len(watcher.messages) == 1, "the broker to see the cut")
            assert watcher.messages[0].payload == b"gone"
            # paho reconnects after 1 s: the proxy still listens.
            await wait_for(lambda: subscriber.connects == 2, "the reconnection")
            assert (proxy.connections, proxy.open_connections) == (2, 1)
        finally:
            subscriber.close()
            watcher.close()
    assert proxy.open_connections == 0
    assert proxy.errors == []
