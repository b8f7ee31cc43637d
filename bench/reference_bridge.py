"""A bridge written the way a user of the official Python client would write it (the reference).

paho-mqtt 2.x subscribes (MQTT 5, QoS 1) and its `on_message` hands each payload to `hstreamdb`
0.5.0's `BufferedProducer`, which runs in an asyncio loop on another thread
(`asyncio.run_coroutine_threadsafe`). The partition key is the second topic level, as our rule
`bench/{dev}/data` -> key `${dev}` does; records are RAW.

Delivery: paho acknowledges a QoS 1 message as soon as `on_message` returns, which is before the
producer has even batched it, let alone before HStreamDB stored it. So this is at-most-once: a
crash loses whatever is buffered, and a failed flush is only logged. That is the usual shape of
such glue code, and the point of comparison for the real bridge. Worse, `BufferedProducer`
is not safe for concurrent `append` calls, which is what one coroutine per message gives it: when
two appends wait for the same flush, both start the next one, the second replaces the batch the
first had queued, and that batch is never sent (the worker then logs "Empty payloads, ignored.").
The benchmark counts those losses instead of working around them.

    python -m bench.reference_bridge --mqtt-port 1883 --hstream 127.0.0.1:6570 --stream bench

It prints `stored N` (records the producer reported stored) at most every 50 ms, so a harness
can tell when it is done, and exits on SIGTERM/SIGINT after flushing what it holds.
"""

import argparse
import asyncio
import contextlib
import signal
import sys
import threading
import time
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPORT_INTERVAL = 0.05


class Progress:
    """Records the producer reported stored or failed, printed as they change."""

    def __init__(self) -> None:
        self.stored = 0
        self.failed = 0
        self._printed = (-1, -1)

    def on_success(self, stream_name: str, payloads: list[Any], shard_id: int) -> None:
        self.stored += len(payloads)

    def on_fail(self, stream_name: str, payloads: list[Any], shard_id: int, e: Exception) -> None:
        self.failed += len(payloads)
        print(f"append of {len(payloads)} records failed: {e!r}", file=sys.stderr, flush=True)

    def report(self) -> None:
        if (self.stored, self.failed) != self._printed:
            self._printed = (self.stored, self.failed)
            print(f"stored {self.stored} failed {self.failed}", flush=True)


async def produce(args: argparse.Namespace, loop_ready: threading.Event, holder: dict[str, Any],
                  stop: asyncio.Event) -> None:  # fmt: skip
    import hstreamdb

    host, port = args.hstream.rsplit(":", 1)
    client = await hstreamdb.insecure_client(host=host, port=int(port))
    async with client:  # closes its channels
        progress = Progress()
        producer = client.new_producer(
            append_callback=progress,
            size_trigger=args.size_trigger,
            time_trigger=args.time_trigger,
            workers=args.workers,
            retry_count=args.retry_count,
        )
        holder["producer"] = producer
        loop_ready.set()
        while not stop.is_set():
            progress.report()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), REPORT_INTERVAL)
        await producer.wait_and_close()
        progress.report()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt-host", default="127.0.0.1")
    parser.add_argument("--mqtt-port", type=int, default=1883)
    parser.add_argument("--client-id", default="reference-bridge")
    parser.add_argument("--topic", default="bench/+/data")
    parser.add_argument("--hstream", default="127.0.0.1:6570", help="host:port")
    parser.add_argument("--stream", default="bench")
    parser.add_argument("--size-trigger", type=int, default=200_000, help="bytes per flush")
    parser.add_argument("--time-trigger", type=float, default=0.005, help="seconds")
    parser.add_argument("--workers", type=int, default=1, help="flush workers (one per shard)")
    parser.add_argument("--retry-count", type=int, default=5)
    args = parser.parse_args(argv)

    loop = asyncio.new_event_loop()
    loop_ready = threading.Event()
    holder: dict[str, Any] = {}
    stop = asyncio.Event()

    def run_loop() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(produce(args, loop_ready, holder, stop))

    producer_thread = threading.Thread(target=run_loop, name="hstream-producer")
    producer_thread.start()
    if not loop_ready.wait(30):
        print("the HStreamDB client did not start", file=sys.stderr)
        return 1
    producer = holder["producer"]
    stream = args.stream

    def on_message(client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        key = message.topic.split("/")[1]
        # Fire and forget: paho acks when this returns, the record is merely queued.
        asyncio.run_coroutine_threadsafe(producer.append(stream, message.payload, key=key), loop)

    subscribed = threading.Event()

    def on_connect(client: paho.Client, userdata: Any, flags: Any, rc: Any, props: Any) -> None:
        client.subscribe(args.topic, qos=1)

    mqtt = paho.Client(CallbackAPIVersion.VERSION2, client_id=args.client_id, protocol=paho.MQTTv5)
    mqtt.on_message = on_message
    mqtt.on_connect = on_connect
    mqtt.on_subscribe = lambda *a: subscribed.set()
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.ReceiveMaximum = 65535
    mqtt.connect(args.mqtt_host, args.mqtt_port, keepalive=30, clean_start=True,
                 properties=properties)  # fmt: skip
    mqtt.loop_start()

    finished = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *a: finished.set())
    deadline = time.monotonic() + 30
    while not subscribed.wait(0.1):
        if time.monotonic() > deadline:
            print("not subscribed after 30 s", file=sys.stderr)
            finished.set()
            break
    else:
        print("subscribed", flush=True)
    finished.wait()
    mqtt.disconnect()
    mqtt.loop_stop()
    loop.call_soon_threadsafe(stop.set)
    producer_thread.join(30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
