"""Acks in `Link`: each PUBACK (QoS 1) or PUBREC (QoS 2) goes once every message received before
its own is stored, whatever order they are stored in (MQTT 4.6 asks it of a client)."""

import random

from bridge.mqtt import _link
from bridge.mqtt._link import Link
from bridge.mqtt._model import MqttSettings
from tests.mqtt.test_link_publish import publish


def make_link() -> tuple[Link, list[int | None]]:
    tickets: list[int | None] = []
    link = Link(
        MqttSettings(protocol=5), None, lambda link, ticket, *rest: tickets.append(ticket),
        lambda link: None,
    )  # fmt: skip
    return link, tickets


def expected_acks(mids: list[int], qos2: set[int]) -> bytes:
    return b"".join(
        (b"\x50\x02" if mid in qos2 else b"\x40\x02") + mid.to_bytes(2, "big") for mid in mids
    )


async def test_acks_go_in_receive_order_whatever_order_messages_are_stored_in() -> None:
    link, tickets = make_link()
    count = 3 * _link._COMPACT_AT  # past the compaction of acked entries, more than once
    mids = [i % 65_535 + 1 for i in range(count)]
    qos2 = {mid for mid in mids if mid % 7 == 0}
    for mid in mids:
        link._on_packet(*publish(b"t", b"p", qos=2 if mid in qos2 else 1, mid=mid))
    assert tickets == list(range(count))
    assert link.waiting_acks == count

    order = list(range(count))
    random.Random(7).shuffle(order)
    done: set[int] = set()
    prefix = 0
    for ticket in order:
        link.ack(ticket)
        done.add(ticket)
        while prefix in done:
            prefix += 1
        # What was written is exactly the acks of the messages before the first not stored.
        assert len(link._acks) == 4 * prefix
        assert link.first_ticket == prefix
    assert bytes(link._acks) == expected_acks(mids, qos2)
    assert link.waiting_acks == 0
    assert len(link._unacked) == 0

    link.ack(order[0])  # stored twice (never expected): nothing more is written
    link._on_packet(*publish(b"t", b"later", qos=1, mid=9))
    assert tickets[-1] == count  # tickets go on across compactions
    link.ack(count)
    assert bytes(link._acks) == expected_acks([*mids, 9], qos2)
    link._lost = True  # the scheduled flush has no connection to write to
