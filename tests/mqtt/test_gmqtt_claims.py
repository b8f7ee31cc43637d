"""What gmqtt 0.8 itself does with acks, checked against a real Mosquitto.

These pin down the library behaviour MqttSource was designed around (see bridge/mqtt/_link.py):
gmqtt holds the PUBACK until an async on_message returns only with optimistic_acknowledgement
off; otherwise it acks before the handler runs. And it runs each async on_message in its own task.
"""

import asyncio

import gmqtt
import pytest
from gmqtt.mqtt.constants import MQTTv50, MQTTv311

from tests.support.mosquitto import Mosquitto, publish


async def _subscribe(client: gmqtt.Client, topic: str) -> None:
    subscribed = asyncio.Event()
    client.on_subscribe = lambda *args: subscribed.set()
    client.subscribe(topic, qos=1)
    await asyncio.wait_for(subscribed.wait(), 10)


async def _first_delivery_then_reconnect(
    broker: Mosquitto, client_id: str, *, optimistic: bool, version: int
) -> list[tuple[bytes, int]]:
    """Deliver one QoS 1 message to a handler that never finishes, disconnect, reconnect with the
    same session, publish a marker, and return what arrives on the second connection up to the
    marker (Mosquitto resends a session's unacked messages before anything new)."""
    started = asyncio.Event()
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def stuck(client: object, topic: str, payload: bytes, qos: int, props: object) -> int:
        started.set()
        await never
        return 0

    props = {"session_expiry_interval": 600} if version == MQTTv50 else {}
    first = gmqtt.Client(
        client_id, clean_session=False, optimistic_acknowledgement=optimistic, **props
    )
    first.on_message = stuck
    await first.connect(broker.host, broker.port, version=version)
    await _subscribe(first, "claims/t")
    await asyncio.to_thread(publish, broker.host, broker.port, [("claims/t", b"m1")])
    await asyncio.wait_for(started.wait(), 10)
    await first.disconnect()
    never.cancel()

    again: list[tuple[bytes, int]] = []
    arrived = asyncio.Event()

    def record(client: object, topic: str, payload: bytes, qos: int, props: dict[str, int]) -> int:
        if payload == b"marker":
            arrived.set()
        else:
            again.append((payload, props["dup"]))
        return 0

    second = gmqtt.Client(client_id, clean_session=False, **props)
    second.on_message = record
    await second.connect(broker.host, broker.port, version=version)
    await asyncio.to_thread(publish, broker.host, broker.port, [("claims/t", b"marker")])
    await asyncio.wait_for(arrived.wait(), 10)
    await second.disconnect()
    return again


@pytest.mark.parametrize("version", [MQTTv50, MQTTv311], ids=["mqtt5", "mqtt311"])
async def test_gmqtt_holds_puback_of_unfinished_async_handler_without_optimistic_ack(
    mosquitto: Mosquitto, version: int
) -> None:
    again = await _first_delivery_then_reconnect(
        mosquitto, f"claims-held-{version}", optimistic=False, version=version
    )
    assert again == [(b"m1", 1)]  # redelivered, flagged DUP


async def test_gmqtt_acks_before_async_handler_finishes_with_optimistic_ack(
    mosquitto: Mosquitto,
) -> None:
    again = await _first_delivery_then_reconnect(
        mosquitto, "claims-optimistic", optimistic=True, version=MQTTv50
    )
    assert again == []  # acked up front: lost although the handler never finished


async def test_gmqtt_runs_each_async_on_message_in_its_own_task(mosquitto: Mosquitto) -> None:
    tasks: set[asyncio.Task[object] | None] = set()
    done = asyncio.Event()

    async def handler(client: object, topic: str, payload: bytes, qos: int, props: object) -> int:
        tasks.add(asyncio.current_task())
        if len(tasks) == 20:
            done.set()
        return 0

    client = gmqtt.Client("claims-tasks", optimistic_acknowledgement=False)
    client.on_message = handler
    await client.connect(mosquitto.host, mosquitto.port)
    await _subscribe(client, "claims/tasks")
    messages = [("claims/tasks", str(i).encode()) for i in range(20)]
    await asyncio.to_thread(publish, mosquitto.host, mosquitto.port, messages)
    await asyncio.wait_for(done.wait(), 10)
    await client.disconnect()
    assert len(tasks) == 20
