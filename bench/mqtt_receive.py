"""QoS 1 receive rate: MqttSource against a bare gmqtt client and paho-mqtt with manual acks.

    .venv/bin/python -m bench.mqtt_receive                      # both modes, ~1 minute
    .venv/bin/python -m bench.mqtt_receive --count 20000 --mode backlog

Every row gets its own Mosquitto (tests/support/mosquitto.py) and a persistent session
(clean start off, Receive Maximum 1000, as the bridge asks) subscribed to `bench/#` at QoS 1.
Messages carry 200-byte payloads and are published by `--publishers` separate processes
(paho-mqtt, every PUBACK awaited). Two modes:

- backlog: the subscriber registers its session and goes away, the publishers fill the session
  (the broker queues), then the subscriber reconnects and the clock runs from connect to the last
  message. Only broker and subscriber work, one core each: the receive path in isolation.
- live: subscriber connected first, then the publishers start; the clock runs from the first
  message to the last. Publishers, broker and subscriber share the two cores.

Rows:
- source, handler returns None: MqttSource acks at once (coalesced PUBACK writes);
- source, completed future: the handler returns an already-done future (the ack path the
  pipeline uses for messages that need nothing, e.g. dropped QoS 0 or filtered);
- source, future set next iteration: the future completes one loop iteration later;
- gmqtt bare, sync on_message: optimistic ack before the callback (no delivery guarantee);
- gmqtt, async on_message, held ack: optimistic_acknowledgement=False, one task per message;
- paho manual_ack: paho-mqtt 2.x, `client.ack(mid, qos)` from on_message (network thread).

Bounded: `--count` messages per row, and `--timeout` seconds per phase. The markdown table goes
to stdout and to bench/results/mqtt_receive.md.
"""

import argparse
import asyncio
import multiprocessing
import shlex
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gmqtt
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from bridge.mqtt import Message, MqttSettings, MqttSource
from tests.support.mosquitto import Mosquitto, Publisher

PAYLOAD_BYTES = 200
TOPIC_FILTER = "bench/#"
RECEIVE_MAXIMUM = 1000
SESSION_EXPIRY = 3600
RESULTS = Path(__file__).resolve().parent / "results" / "mqtt_receive.md"


def _publish_range(host: str, port: int, start: int, stop: int, timeout: float) -> None:
    """One publisher process: messages start..stop-1 over 16 topics, every PUBACK awaited."""
    pad = b"x" * PAYLOAD_BYTES
    messages = ((f"bench/{i % 16}", (b"%d|" % i + pad)[:PAYLOAD_BYTES]) for i in range(start, stop))
    with Publisher(host, port) as publisher:
        publisher.publish_many(messages, qos=1, timeout=timeout)


def start_publishers(
    broker: Mosquitto, count: int, processes: int, timeout: float
) -> list[multiprocessing.process.BaseProcess]:
    context = multiprocessing.get_context("spawn")
    step = -(-count // processes)
    workers: list[multiprocessing.process.BaseProcess] = [
        context.Process(
            target=_publish_range,
            args=(broker.host, broker.port, start, min(count, start + step), timeout),
            daemon=True,
        )
        for start in range(0, count, step)
    ]
    for worker in workers:
        worker.start()
    return workers


async def join_publishers(workers: list[multiprocessing.process.BaseProcess]) -> None:
    for worker in workers:
        await asyncio.to_thread(worker.join)
        if worker.exitcode != 0:
            raise RuntimeError(f"publisher exited with {worker.exitcode}")


class Subscriber:
    """Counts messages; `done` is set at `count`. Subclasses connect one client library."""

    def __init__(self, broker: Mosquitto, client_id: str, count: int) -> None:
        self.broker = broker
        self.client_id = client_id
        self.count = count
        self.received = 0
        self.first_at = 0.0
        self.done_at = 0.0
        self.done = threading.Event()

    def got_one(self) -> None:
        self.received += 1
        if self.received == 1:
            self.first_at = time.monotonic()
        if self.received == self.count:
            self.done_at = time.monotonic()
            self.done.set()

    async def open(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SourceSubscriber(Subscriber):
    def __init__(self, broker: Mosquitto, client_id: str, count: int, ack: str) -> None:
        super().__init__(broker, client_id, count)
        self.ack = ack
        self.source: MqttSource | None = None

    def handle(self, message: Message) -> Awaitable[None] | None:
        self.got_one()
        if self.ack == "none":
            return None
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        if self.ack == "done":
            future.set_result(None)
        else:
            loop.call_soon(future.set_result, None)
        return future

    async def open(self) -> None:
        settings = MqttSettings(
            url=self.broker.url,
            client_id=self.client_id,
            receive_maximum=RECEIVE_MAXIMUM,
            session_expiry=SESSION_EXPIRY,
        )
        self.source = MqttSource(settings, self.handle)
        await self.source.__aenter__()
        await self.source.wait_connected(10)
        await self.source.set_subscriptions({TOPIC_FILTER: 1})

    async def close(self) -> None:
        if self.source is not None:
            await self.source.__aexit__(None, None, None)


class GmqttSubscriber(Subscriber):
    def __init__(self, broker: Mosquitto, client_id: str, count: int, held: bool) -> None:
        super().__init__(broker, client_id, count)
        self.held = held
        self.client: Any = None

    def on_message(self, client: object, topic: str, payload: bytes, qos: int, props: Any) -> int:
        self.got_one()
        return 0

    async def on_message_async(
        self, client: object, topic: str, payload: bytes, qos: int, props: Any
    ) -> int:
        self.got_one()
        return 0

    async def open(self) -> None:
        client = gmqtt.Client(
            self.client_id,
            clean_session=False,
            optimistic_acknowledgement=not self.held,
            session_expiry_interval=SESSION_EXPIRY,
            receive_maximum=RECEIVE_MAXIMUM,
        )
        client.on_message = self.on_message_async if self.held else self.on_message
        subscribed = asyncio.Event()
        client.on_subscribe = lambda *args: subscribed.set()
        await client.connect(self.broker.host, self.broker.port)
        client.subscribe(TOPIC_FILTER, qos=1)
        await asyncio.wait_for(subscribed.wait(), 10)
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            await self.client.disconnect()


class PahoSubscriber(Subscriber):
    """paho-mqtt with manual_ack; its network thread does the work."""

    def __init__(self, broker: Mosquitto, client_id: str, count: int) -> None:
        super().__init__(broker, client_id, count)
        self.client: paho.Client | None = None

    def on_message(self, client: paho.Client, userdata: object, message: Any) -> None:
        self.got_one()
        client.ack(message.mid, message.qos)

    async def open(self) -> None:
        client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=paho.MQTTv5,
            manual_ack=True,
        )
        subscribed = threading.Event()
        client.on_message = self.on_message
        client.on_subscribe = lambda *args: subscribed.set()
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        properties.SessionExpiryInterval = SESSION_EXPIRY
        properties.ReceiveMaximum = RECEIVE_MAXIMUM
        client.connect(self.broker.host, self.broker.port, clean_start=False, properties=properties)
        client.loop_start()
        client.subscribe(TOPIC_FILTER, qos=1)
        if not await asyncio.to_thread(subscribed.wait, 10):
            raise TimeoutError("paho: no SUBACK")
        self.client = client

    async def close(self) -> None:
        if self.client is not None:
            self.client.disconnect()
            await asyncio.to_thread(self.client.loop_stop)


@dataclass(frozen=True, slots=True)
class Row:
    name: str
    make: Callable[[Mosquitto, str, int], Subscriber]


ROWS = [
    Row("source, handler returns None", lambda b, c, n: SourceSubscriber(b, c, n, "none")),
    Row("source, completed future", lambda b, c, n: SourceSubscriber(b, c, n, "done")),
    Row("source, future set next iteration", lambda b, c, n: SourceSubscriber(b, c, n, "soon")),
    Row(
        "gmqtt bare, sync on_message (acks first)", lambda b, c, n: GmqttSubscriber(b, c, n, False)
    ),
    Row("gmqtt, async on_message, held ack", lambda b, c, n: GmqttSubscriber(b, c, n, True)),
    Row("paho manual_ack", lambda b, c, n: PahoSubscriber(b, c, n)),
]


async def wait_done(subscriber: Subscriber, timeout: float) -> None:
    if not await asyncio.to_thread(subscriber.done.wait, timeout):
        raise TimeoutError(f"received {subscriber.received} of {subscriber.count} in {timeout} s")


async def run_row(row: Row, mode: str, count: int, publishers: int, timeout: float) -> float:
    """Messages per second for one row in one mode, on a fresh broker."""
    with Mosquitto() as broker:
        subscriber = row.make(broker, "bench-sub", count)
        if mode == "backlog":
            await subscriber.open()  # registers the persistent session and its subscription
            await subscriber.close()
            await join_publishers(start_publishers(broker, count, publishers, timeout))
            started = time.monotonic()
            await subscriber.open()
            try:
                await wait_done(subscriber, timeout)
            finally:
                await subscriber.close()
            return count / (subscriber.done_at - started)
        await subscriber.open()
        try:
            workers = start_publishers(broker, count, publishers, timeout)
            await wait_done(subscriber, timeout)
            await join_publishers(workers)
        finally:
            await subscriber.close()
        return (count - 1) / (subscriber.done_at - subscriber.first_at)


async def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=100_000, help="messages per row")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument("--mode", choices=["backlog", "live", "both"], default="both")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per phase")
    parser.add_argument("--only", help="run only rows whose name contains this")
    args = parser.parse_args(argv)
    modes = ["backlog", "live"] if args.mode == "both" else [args.mode]
    rows = [r for r in ROWS if not args.only or args.only in r.name]

    results: dict[tuple[str, str], float] = {}
    for row in rows:
        for mode in modes:
            rate = await run_row(row, mode, args.count, args.publishers, args.timeout)
            results[row.name, mode] = rate
            print(f"{row.name:45} {mode:8} {rate:10,.0f} msg/s", file=sys.stderr)

    header = "| subscriber | " + " | ".join(f"{m} msg/s" for m in modes) + " |"
    lines = [
        f"`python -m bench.mqtt_receive {shlex.join(argv)}`".replace(" `", "`"),
        "",
        f"QoS 1, {PAYLOAD_BYTES}-byte payloads, {args.count:,} messages per cell, "
        f"{args.publishers} publisher processes, Mosquitto {_mosquitto_version()}.",
        "",
        header,
        "|---|" + "---:|" * len(modes),
    ]
    for row in rows:
        cells = " | ".join(f"{results[row.name, m]:,.0f}" for m in modes)
        lines.append(f"| {row.name} | {cells} |")
    table = "\n".join(lines) + "\n"
    print(table)
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(table)


def _mosquitto_version() -> str:
    import subprocess

    from tests.support.mosquitto import find_mosquitto

    out = subprocess.run([find_mosquitto(), "-h"], capture_output=True, text=True).stdout
    return out.split("version", 1)[1].split()[0] if "version" in out else "?"


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
