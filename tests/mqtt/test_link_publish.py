"""The PUBLISH parser in `Link`: packets without MQTT 5 properties are parsed there, the rest
(properties, a topic that is not UTF-8, an empty topic that needs an alias) go to gmqtt's."""

from collections.abc import Mapping
from typing import Any

import pytest

from bridge.mqtt._link import Link
from bridge.mqtt._model import MqttSettings

Seen = tuple[int | None, int, str, bytes, dict[str, Any]]


def publish(
    topic: bytes, payload: bytes, *, qos: int = 1, mid: int = 0x1234, dup: bool = False,
    retain: bool = False, properties: bytes | None = b"",
) -> tuple[int, bytes]:  # fmt: skip
    """(first byte, the rest after the remaining length) of a PUBLISH; `properties=None` for
    MQTT 3.1.1, else the property bytes (without their length)."""
    cmd = 0x30 | (dup << 3) | (qos << 1) | retain
    body = len(topic).to_bytes(2, "big") + topic
    if qos:
        body += mid.to_bytes(2, "big")
    if properties is not None:
        assert len(properties) < 128
        body += bytes([len(properties)]) + properties
    return cmd, body + payload


def make_link(protocol: int) -> tuple[Link, list[Seen], list[tuple[int, bytes]]]:
    seen: list[Seen] = []
    fallback: list[tuple[int, bytes]] = []

    def on_publish(
        link: Link, ticket: int | None, qos: int, topic: str, payload: bytes,
        props: Mapping[str, Any],
    ) -> None:  # fmt: skip
        seen.append((ticket, qos, topic, payload, dict(props)))

    link = Link(MqttSettings(protocol=protocol), None, on_publish, lambda link: None)
    link._gmqtt_publish = lambda cmd, packet: fallback.append((cmd, packet))
    return link, seen, fallback


@pytest.mark.parametrize("protocol", [4, 5])
async def test_publishes_without_properties_are_parsed_by_the_link(protocol: int) -> None:
    link, seen, fallback = make_link(protocol)
    props = None if protocol == 4 else b""
    packets = [
        publish(b"a/b", b'{"t": 1}', qos=1, mid=7, properties=props),
        publish("wätter/ü".encode(), b"", qos=2, mid=0xFFFF, retain=True, properties=props),
        publish(b"q0", b"zero", qos=0, properties=props),
        publish(b"a/b", b"again", qos=1, mid=7, dup=True, properties=props),
        publish(b"a/c", b"reused", qos=1, mid=7, properties=props),
    ]
    for cmd, body in packets:
        link._on_packet(cmd, body)
    assert fallback == []
    assert seen == [
        (0, 1, "a/b", b'{"t": 1}', {"dup": 0, "retain": 0}),
        (1, 2, "wätter/ü", b"", {"dup": 0, "retain": 1}),
        (None, 0, "q0", b"zero", {"dup": 0, "retain": 0}),
        # the re-send (DUP, id 7 in flight) is not handed over; a new message with id 7 is
        (2, 1, "a/c", b"reused", {"dup": 0, "retain": 0}),
    ]
    assert (link.duplicates, link.reused_ids) == (1, 1)


async def test_publishes_with_properties_or_a_topic_that_is_not_utf8_go_to_gmqtt() -> None:
    link, seen, fallback = make_link(5)
    user_property = b"\x26" + b"\x00\x01k" + b"\x00\x01v"
    packets = [
        publish(b"a/b", b"x", properties=user_property),
        publish(b"\xff\xfe", b"y"),
        publish(b"", b"z", properties=b"\x23\x00\x01"),  # topic alias 1, empty topic
    ]
    for cmd, body in packets:
        link._on_packet(cmd, body)
    assert fallback == packets
    assert seen == []
