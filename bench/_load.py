"""Load for the pipeline benchmark: publisher processes and the count-only ceiling subscriber.

Every message is a 200-byte JSON object that starts with the wall-clock publish time and a
sequence number, so whoever receives or stores it can tell its latency and whether it is a
duplicate:

    {"ts":1712345678.123456,"seq":42,"dev":"d042","pad":"xxxx...."}

Publishers are separate processes (`multiprocessing`, spawn) with one paho-mqtt connection each:
they publish QoS 1, keep at most `window` messages unacknowledged (a semaphore released by
PUBACK, so the timestamp is taken when the message goes on the wire, not when it enters a
client-side queue), and finish only once every PUBACK has arrived. All of them start on one
event, so the start of the run is the earliest timestamp any of them wrote.
"""

import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.context
import os
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from typing import Any

PAYLOAD_BYTES = 200
DEVICES = 100
TOPIC_FILTER = "bench/+/data"
WARMUP_TOPIC = "bench/warmup/data"
CONNECT_TIMEOUT = 10.0

_MP = multiprocessing.get_context("spawn")


def device(seq: int) -> str:
    return f"d{seq % DEVICES:03d}"


def topic(seq: int) -> str:
    return f"bench/{device(seq)}/data"


def payload(seq: int, ts: float) -> bytes:
    """The JSON reading for `seq`, padded to exactly PAYLOAD_BYTES."""
    head = f'{{"ts":{ts:.6f},"seq":{seq},"dev":"{device(seq)}","pad":"'
    return (head + "x" * (PAYLOAD_BYTES - len(head) - 2) + '"}').encode()


def parse(data: bytes | dict[str, Any]) -> tuple[float, int]:
    """(publish timestamp, sequence number) of a payload as received or read back."""
    value = json.loads(data) if isinstance(data, bytes | bytearray) else data
    return float(value["ts"]), int(value["seq"])


def parse_ts(data: bytes) -> float:
    """Just the timestamp, cheaply (the count-only subscriber does this per message)."""
    return float(data[6 : data.index(b",", 6)])


# --- publishers ---------------------------------------------------------------------------


@dataclass(slots=True)
class PublisherReport:
    index: int
    published: int = 0
    acked: int = 0
    first_ts: float = 0.0
    last_ts: float = 0.0
    acked_at: float = 0.0
    error: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    """What one publisher process does: `count` messages, paced at `rate` msg/s if given."""

    index: int
    host: str
    port: int
    publishers: int
    count: int
    rate: float | None
    window: int
    timeout: float
    first_seq: int = 0

    def seq(self, k: int) -> int:
        """Sequence numbers first_seq + index, + publishers, ...: unique across processes."""
        return self.first_seq + self.index + k * self.publishers


def _publisher_main(plan: Plan, ready: Any, go: MpEvent, results: Any) -> None:
    """One publisher process: connect, wait for `go`, publish `count` messages, await PUBACKs.

    With `plan.rate` the sends are paced; otherwise they go as fast as the in-flight window
    allows.
    """
    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    index, count, rate, timeout = plan.index, plan.count, plan.rate, plan.timeout
    report = PublisherReport(index)
    client = paho.Client(
        CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{index}-{os.getpid()}",
        protocol=paho.MQTTv5,
    )  # fmt: skip
    client.max_inflight_messages_set(plan.window)
    client.max_queued_messages_set(0)
    slots = threading.Semaphore(plan.window)
    connected = threading.Event()
    all_acked = threading.Event()
    lock = threading.Lock()

    def on_connect(*args: Any) -> None:
        connected.set()

    def on_publish(*args: Any) -> None:
        with lock:
            report.acked += 1
            if report.acked >= count:
                report.acked_at = time.time()
                all_acked.set()
        slots.release()

    client.on_connect = on_connect
    client.on_publish = on_publish

    def check(ok: bool, problem: str) -> None:
        if not ok:
            raise TimeoutError(f"publisher {index}: {problem}")

    try:
        client.connect(plan.host, plan.port, keepalive=60)
        client.loop_start()
        check(connected.wait(CONNECT_TIMEOUT), f"did not connect to {plan.host}:{plan.port}")
        ready.put(index)
        check(go.wait(timeout), "was never told to start")
        deadline = time.monotonic() + timeout
        started = time.monotonic()
        for k in range(count):
            if rate is not None:
                ahead = started + k / rate - time.monotonic()
                if ahead > 0.001:
                    time.sleep(ahead)
            free = slots.acquire(timeout=max(0.0, deadline - time.monotonic()))
            check(free, f"window full at the deadline ({report.published} sent)")
            seq = plan.seq(k)
            ts = time.time()
            info = client.publish(topic(seq), payload(seq, ts), qos=1)
            check(info.rc == paho.MQTT_ERR_SUCCESS, f"publish failed rc={info.rc}")
            if k == 0:
                report.first_ts = ts
            report.last_ts = ts
            report.published += 1
        if count:
            acked = all_acked.wait(max(0.0, deadline - time.monotonic()))
            check(acked, f"{count - report.acked} PUBACKs missing at the deadline")
    except Exception as exc:  # reported to the harness, which fails the cell with it
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        with contextlib.suppress(Exception):
            client.disconnect()
            client.loop_stop()
        results.put(report)


def _gmqtt_publisher_main(plan: Plan, ready: Any, go: MpEvent, results: Any) -> None:
    """The same publisher on gmqtt (asyncio): PUBACKs counted by overriding the hook that drops
    an acknowledged message from gmqtt's in-flight store."""
    report = PublisherReport(plan.index)
    try:
        asyncio.run(_gmqtt_publish(plan, ready, go, report))
    except Exception as exc:  # reported to the harness, which fails the cell with it
        report.error = f"{type(exc).__name__}: {exc}"
    results.put(report)


async def _gmqtt_publish(plan: Plan, ready: Any, go: MpEvent, report: PublisherReport) -> None:
    import gmqtt

    index, count, rate, timeout = plan.index, plan.count, plan.rate, plan.timeout
    slots = asyncio.Semaphore(plan.window)
    all_acked = asyncio.Event()

    class AckingClient(gmqtt.Client):  # type: ignore[misc]
        def _remove_message_from_queue(self, mid: int) -> None:
            super()._remove_message_from_queue(mid)
            report.acked += 1
            if report.acked >= count:
                report.acked_at = time.time()
                all_acked.set()
            slots.release()

    client = AckingClient(f"bench-pub-{index}-{os.getpid()}")
    await asyncio.wait_for(
        client.connect(plan.host, plan.port, version=gmqtt.constants.MQTTv50), CONNECT_TIMEOUT
    )
    try:
        ready.put(index)
        if not await asyncio.to_thread(go.wait, timeout):
            raise TimeoutError(f"publisher {index} was never told to start")
        async with asyncio.timeout(timeout):
            started = time.monotonic()
            for k in range(count):
                if rate is not None:
                    ahead = started + k / rate - time.monotonic()
                    if ahead > 0.001:
                        await asyncio.sleep(ahead)
                await slots.acquire()
                seq = plan.seq(k)
                ts = time.time()
                client.publish(topic(seq), payload(seq, ts), qos=1)
                if k == 0:
                    report.first_ts = ts
                report.last_ts = ts
                report.published += 1
            if count:
                await all_acked.wait()
    finally:
        await client.disconnect()


PUBLISHER_MAINS = {"paho": _publisher_main, "gmqtt": _gmqtt_publisher_main}


@dataclass(slots=True)
class LoadResult:
    reports: list[PublisherReport] = field(default_factory=list)

    @property
    def published(self) -> int:
        return sum(r.published for r in self.reports)

    @property
    def start(self) -> float:
        """Wall-clock time of the first message any publisher sent."""
        return min((r.first_ts for r in self.reports if r.published), default=0.0)

    @property
    def errors(self) -> list[str]:
        return [r.error for r in self.reports if r.error]


class PublisherPool:
    """`publishers` processes that connect first, then publish together on `start()`.

    Use as a context manager: leaving it terminates any process still alive.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        messages: int,
        publishers: int,
        rate: float | None = None,
        window: int = 1000,
        timeout: float = 300.0,
        client: str = "gmqtt",
        first_seq: int = 0,
    ) -> None:
        self.messages = messages
        self.timeout = timeout
        self._ready: Any = _MP.Queue()
        self._results: Any = _MP.Queue()
        self._go = _MP.Event()
        share = [messages // publishers + (i < messages % publishers) for i in range(publishers)]
        each_rate = None if rate is None else rate / publishers
        plans = [
            Plan(i, host, port, publishers, share[i], each_rate, window, timeout, first_seq)
            for i in range(publishers)
        ]
        self._processes = [
            _MP.Process(
                target=PUBLISHER_MAINS[client],
                args=(plans[i], self._ready, self._go, self._results),
                name=f"bench-publisher-{i}",
                daemon=True,
            )
            for i in range(publishers)
        ]

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes if p.pid is not None]

    def connect(self) -> None:
        """Start the processes and return once every one is connected to the broker."""
        for process in self._processes:
            process.start()
        deadline = time.monotonic() + CONNECT_TIMEOUT + 20.0
        for _ in self._processes:
            remaining = deadline - time.monotonic()
            try:
                self._ready.get(timeout=max(0.1, remaining))
            except Exception:
                dead = [p.name for p in self._processes if not p.is_alive()]
                raise TimeoutError(f"publishers not connected in time (exited: {dead})") from None

    def start(self) -> None:
        self._go.set()

    def wait(self) -> LoadResult:
        """Every publisher's report (each returns once its PUBACKs are in, or on its deadline)."""
        result = LoadResult()
        deadline = time.monotonic() + self.timeout + 30.0
        for _ in self._processes:
            try:
                result.reports.append(
                    self._results.get(timeout=max(0.1, deadline - time.monotonic()))
                )
            except Exception:
                raise TimeoutError("a publisher process did not report in time") from None
        for process in self._processes:
            process.join(5.0)
        return result

    def close(self) -> None:
        for process in self._processes:
            if process.is_alive():
                process.terminate()
        for process in self._processes:
            if process.pid is not None:
                process.join(5.0)
                if process.is_alive():
                    process.kill()
                    process.join(5.0)

    def __enter__(self) -> "PublisherPool":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def publish_warmup(host: str, port: int) -> None:
    """One QoS 1 message on WARMUP_TOPIC (seq -1): proves the path works before timing."""
    from tests.support.mosquitto import publish

    publish(host, port, [(WARMUP_TOPIC, payload(-1, time.time()))], timeout=CONNECT_TIMEOUT)


# --- the ceiling: a subscriber that only counts ---------------------------------------------


@dataclass(slots=True)
class CeilingReport:
    received: int = 0
    last_at: float = 0.0
    cpu_seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    error: str = ""


def _ceiling_main(
    host: str, port: int, expected: int, ready: MpEvent, warm: MpEvent, results: Any,
    timeout: float,
) -> None:  # fmt: skip
    report = CeilingReport()
    try:
        asyncio.run(_ceiling(host, port, expected, ready, warm, report, timeout))
    except Exception as exc:
        report.error = f"{type(exc).__name__}: {exc}"
    results.put(report)


async def _ceiling(
    host: str, port: int, expected: int, ready: MpEvent, warm: MpEvent, report: CeilingReport,
    timeout: float,
) -> None:  # fmt: skip
    import gmqtt

    done = asyncio.Event()
    subscribed = asyncio.Event()
    latencies = report.latencies

    def on_message(client: Any, topic: str, data: bytes, qos: int, properties: Any) -> int:
        now = time.time()
        if topic == WARMUP_TOPIC:
            warm.set()
            return 0
        latencies.append(now - parse_ts(data))
        report.received += 1
        report.last_at = now
        if report.received >= expected:
            done.set()
        return 0

    client = gmqtt.Client(f"bench-ceiling-{os.getpid()}")
    client.on_message = on_message
    client.on_subscribe = lambda *args: subscribed.set()
    await client.connect(host, port, version=gmqtt.constants.MQTTv50)
    try:
        client.subscribe(TOPIC_FILTER, qos=1)  # the filter covers WARMUP_TOPIC too
        await asyncio.wait_for(subscribed.wait(), CONNECT_TIMEOUT)
        ready.set()
        cpu_before = _cpu_seconds()
        await asyncio.wait_for(done.wait(), timeout)
        report.cpu_seconds = _cpu_seconds() - cpu_before
    finally:
        await client.disconnect()


def _cpu_seconds() -> float:
    times = os.times()
    return times.user + times.system


class CeilingSubscriber:
    """The count-only gmqtt subscriber in its own process."""

    def __init__(self, host: str, port: int, expected: int, timeout: float) -> None:
        self.ready = _MP.Event()
        self.warm = _MP.Event()
        self._results: Any = _MP.Queue()
        self.timeout = timeout
        self._process = _MP.Process(
            target=_ceiling_main,
            args=(host, port, expected, self.ready, self.warm, self._results, timeout),
            name="bench-ceiling",
            daemon=True,
        )

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    def start(self) -> None:
        self._process.start()
        if not self.ready.wait(CONNECT_TIMEOUT + 20.0):
            raise TimeoutError("the ceiling subscriber did not subscribe in time")

    def wait(self) -> CeilingReport:
        try:
            report: CeilingReport = self._results.get(timeout=self.timeout + 30.0)
        except Exception:
            raise TimeoutError("the ceiling subscriber did not report in time") from None
        self._process.join(5.0)
        return report

    def close(self) -> None:
        if self._process.pid is not None and self._process.is_alive():
            self._process.terminate()
            self._process.join(5.0)
