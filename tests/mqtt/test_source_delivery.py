"""Handler order under load, subscriptions changed live, shared groups and MQTT 3.1.1."""

import asyncio

import gmqtt

from bridge.mqtt import Message, MqttSource
from tests.mqtt.collector import Collector, numbered, settings_for
from tests.support.mosquitto import Mosquitto, publish


async def test_handler_sees_messages_in_publish_order_under_load(mosquitto: Mosquitto) -> None:
    count = 5000
    messages = [(f"order/{i % 7}", str(i).encode()) for i in range(count)]
    collector = Collector("done")
    async with MqttSource(settings_for(mosquitto, "order"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"order/#": 1})
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        await collector.wait_count(count)
    assert collector.payloads == [payload for _, payload in messages]
    assert [m.topic for m in collector.messages] == [topic for topic, _ in messages]


async def test_set_subscriptions_adds_removes_and_changes_qos_live(mosquitto: Mosquitto) -> None:
    collector = Collector("ack")

    async def send(topic: str, payload: bytes) -> None:
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [(topic, payload)])

    async with MqttSource(settings_for(mosquitto, "subs"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"subs/a": 0, "subs/marker": 1})
        await send("subs/a", b"a1")
        await send("subs/b", b"b1")  # not subscribed yet
        await send("subs/marker", b"k1")
        await collector.wait_payloads({b"k1"})
        assert [(m.payload, m.qos) for m in collector.messages] == [(b"a1", 0), (b"k1", 1)]

        collector.messages.clear()
        await source.set_subscriptions({"subs/a": 1, "subs/b": 1, "subs/marker": 1})
        await send("subs/a", b"a2")
        await send("subs/b", b"b2")
        await send("subs/marker", b"k2")
        await collector.wait_payloads({b"k2"})
        assert [(m.payload, m.qos) for m in collector.messages] == [
            (b"a2", 1),  # QoS raised from 0 to 1
            (b"b2", 1),  # added
            (b"k2", 1),
        ]

        collector.messages.clear()
        await source.set_subscriptions({"subs/b": 1, "subs/marker": 1})
        await send("subs/a", b"a3")  # removed
        await send("subs/b", b"b3")
        await send("subs/marker", b"k3")
        await collector.wait_payloads({b"k3"})
        assert collector.payloads == [b"b3", b"k3"]
        assert source.subscriptions == {"subs/b": 1, "subs/marker": 1}


async def test_subscriptions_set_before_connecting_apply_once_connected(
    mosquitto: Mosquitto,
) -> None:
    collector = Collector("ack")
    mosquitto.stop()
    async with MqttSource(settings_for(mosquitto, "early"), collector) as source:
        assert not source.connected
        await source.set_subscriptions({"early/t": 1})
        await asyncio.to_thread(mosquitto.start)
        await source.wait_connected(10)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("early/t", b"x")])
        await collector.wait_payloads({b"x"})


async def test_two_sources_in_one_shared_group_split_the_messages(mosquitto: Mosquitto) -> None:
    count = 1000
    both = Collector("ack")
    first: list[bytes] = []
    second: list[bytes] = []

    def one_handler(message: Message) -> None:
        first.append(message.payload)
        both(message)

    def two_handler(message: Message) -> None:
        second.append(message.payload)
        both(message)

    settings = {"shared_group": "bridges"}
    async with (
        MqttSource(settings_for(mosquitto, "shared-1", **settings), one_handler) as one,
        MqttSource(settings_for(mosquitto, "shared-2", **settings), two_handler) as two,
    ):
        await one.wait_connected(10)
        await two.wait_connected(10)
        await one.set_subscriptions({"shared/#": 1})
        await two.set_subscriptions({"shared/#": 1})
        messages = numbered("shared/t", 0, count)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        await both.wait_count(count)
    assert first
    assert second
    assert sorted(first + second) == sorted(p for _, p in messages)  # each message exactly once


async def test_mqtt_311_session_keeps_unacked_messages_and_user_properties_are_empty(
    mosquitto: Mosquitto,
) -> None:
    held = Collector("hold")
    settings = settings_for(mosquitto, "v311", protocol=4)
    async with MqttSource(settings, held) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"v311/t": 1})
        await asyncio.to_thread(
            publish, mosquitto.host, mosquitto.port, [("v311/t", b"m1")], protocol=4
        )
        await held.wait_count(1)
    assert held.messages[0].user_properties == ()

    again = Collector("ack")
    async with MqttSource(settings, again) as source:  # clean_session False: session resumed
        await again.wait_payloads({b"m1"})
        assert source.subscriptions == {}  # nothing wanted yet: the broker's session delivered


async def test_retained_message_with_user_properties_arrives_once_across_reconnects(
    mosquitto: Mosquitto,
) -> None:
    publisher = gmqtt.Client("retain-publisher")
    await publisher.connect(mosquitto.host, mosquitto.port)
    publisher.publish(
        "retained/t", b"state", qos=1, retain=True, user_property=[("site", "s1"), ("k", "v")]
    )
    await publisher.disconnect()  # the broker reads the PUBLISH before the DISCONNECT

    collector = Collector("ack")
    async with MqttSource(settings_for(mosquitto, "retained"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"retained/t": 1})
        await collector.wait_payloads({b"state"})
        assert collector.messages[0].retain
        assert collector.messages[0].user_properties == (("site", "s1"), ("k", "v"))

        await asyncio.to_thread(mosquitto.restart)
        await source.wait_connected(10)
        assert source.reconnects == 1
        messages = [("retained/t", b"marker")]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        await collector.wait_payloads({b"marker"})
    # Resubscribing with retain handling 1 did not replay the retained message.
    assert collector.payloads == [b"state", b"marker"]
    assert not collector.messages[1].retain


async def test_overlapping_filters_deliver_each_message_once(mosquitto: Mosquitto) -> None:
    collector = Collector("ack")
    async with MqttSource(settings_for(mosquitto, "overlap"), collector) as source:
        await source.wait_connected(10)
        await source.set_subscriptions({"ov/+/temp": 1})
        await source.set_subscriptions({"ov/+/temp": 1, "ov/#": 0})  # now a wider one too
        messages = [("ov/s1/temp", b"1"), ("ov/s1/hum", b"2"), ("ov/s2/temp", b"3")]
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
        await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, [("ov/end", b"end")])
        await collector.wait_payloads({b"end"})
        assert source.subscriptions == {"ov/+/temp": 1, "ov/#": 0}
    assert collector.payloads == [b"1", b"2", b"3", b"end"]
    assert {m.qos for m in collector.messages} == {1}  # the cover has the higher QoS
