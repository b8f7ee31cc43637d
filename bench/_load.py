"""Load for the pipeline benchmark: publisher processes and the count-only ceiling subscribers.

Every message is a JSON object that carries its wall-clock publish time (`ts`) and a sequence
number (`seq`), so whoever receives or stores it can tell its latency and whether it is a
duplicate. Two payloads (`Shape.payload`):

- padded (the default): 200 bytes, publish time in seconds with microseconds,
      {"ts":1712345678.123456,"seq":42,"dev":"d042","pad":"xxxx...."}
- telemetry: a realistic ~170-byte reading, publish time in epoch milliseconds (as devices send
  it), device, values and sequence number varying per message,
      {"ts": 1764460800123, "device": "dev-0042", "temp": 21.5, "hum": 40.2, "bat": 3.71,
       "status": "ok", "seq": 123456, "loc": {"lat": 52.52, "lon": 13.405}, "fw": "1.4.2"}

and two topic layouts (`Shape.topics`): bench (`bench/dNNN/data`, 100 devices) and fleet
(`fleet/site-SSS/dev-DDDD/telemetry`, 10,000 devices over 100 sites; device d is on site d % 100).

Publishers are separate processes (`multiprocessing`, spawn) with one connection each: paho-mqtt
or gmqtt publish QoS 1, keep at most `window` messages unacknowledged (a semaphore released by
PUBACK, so the timestamp is taken when the message goes on the wire, not when it enters a
client-side queue), and finish only once every PUBACK has arrived. The C publisher ("c") is a
`mosquitto_pub -l -q 1 -M window` child fed one message per line through a pipe by its process
(so the timestamp is taken when the line is written: the pipe and mosquitto_pub's own queue come
on top); mosquitto_pub -l publishes every line on its one topic, `bench/dNNN/data` with NNN the
publisher's index, and exits once the last message is acknowledged. All publishers start on one
event, so the start of the run is the earliest timestamp any of them wrote.
"""

import asyncio
import contextlib
import json
import multiprocessing
import multiprocessing.context
import os
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from multiprocessing.synchronize import Event as MpEvent
from pathlib import Path
from typing import Any

PAYLOAD_BYTES = 200
DEVICES = 100
FLEET_SITES = 100
FLEET_DEVICES = 10_000
TOPIC_FILTER = "bench/+/data"
WARMUP_TOPIC = "bench/warmup/data"
CONNECT_TIMEOUT = 10.0
MS_TIMESTAMP = 1e11  # a `ts` above this is in milliseconds (telemetry), below in seconds
PAYLOADS = ("padded", "telemetry")
TOPIC_LAYOUTS = ("bench", "fleet")
C_LINES_PER_WRITE = 64  # lines per pipe write to a C publisher (one timestamp per write)

_MP = multiprocessing.get_context("spawn")


def device(seq: int) -> str:
    return f"d{seq % DEVICES:03d}"


def topic(seq: int) -> str:
    return f"bench/{device(seq)}/data"


def payload(seq: int, ts: float) -> bytes:
    """The JSON reading for `seq`, padded to exactly PAYLOAD_BYTES."""
    head = f'{{"ts":{ts:.6f},"seq":{seq},"dev":"{device(seq)}","pad":"'
    return (head + "x" * (PAYLOAD_BYTES - len(head) - 2) + '"}').encode()


def fleet_topic(dev: int) -> str:
    """Device `dev` of the fleet: on site dev % FLEET_SITES."""
    return f"fleet/site-{dev % FLEET_SITES:03d}/dev-{dev:04d}/telemetry"


def telemetry(seq: int, ts: float, dev: int) -> bytes:
    """A ~170-byte telemetry reading of device `dev`; values vary with `seq`, ts in ms."""
    status = "low" if seq % 50 == 0 else "ok"
    return (
        f'{{"ts": {int(ts * 1000)}, "device": "dev-{dev:04d}", '
        f'"temp": {15 + seq * 7 % 150 / 10:.1f}, "hum": {30 + seq * 13 % 400 / 10:.1f}, '
        f'"bat": {3.5 + seq % 50 / 100:.2f}, "status": "{status}", "seq": {seq}, '
        f'"loc": {{"lat": {52 + dev % 100 / 100:.2f}, "lon": {13 + dev % 1000 / 1000:.3f}}}, '
        f'"fw": "1.4.2"}}'
    ).encode()


@dataclass(frozen=True, slots=True)
class Shape:
    """What the publishers send: the payload kind and the topic layout."""

    payload: str = "padded"  # of PAYLOADS
    topics: str = "bench"  # of TOPIC_LAYOUTS

    @property
    def devices(self) -> int:
        return FLEET_DEVICES if self.topics == "fleet" else DEVICES

    def topic(self, seq: int) -> str:
        return fleet_topic(seq % FLEET_DEVICES) if self.topics == "fleet" else topic(seq)

    def payload_of(self, seq: int, ts: float) -> bytes:
        if self.payload == "telemetry":
            return telemetry(seq, ts, seq % self.devices)
        return payload(seq, ts)

    def warmup(self) -> list[str]:
        """Warm-up topics (one seq -1 message each): every fleet site once, so that the streams
        a fan-out rule creates exist before the timed part; else WARMUP_TOPIC."""
        if self.topics == "fleet":
            return [fleet_topic(dev) for dev in range(FLEET_SITES)]
        return [WARMUP_TOPIC]


def _seconds(ts: float) -> float:
    return ts / 1000 if ts > MS_TIMESTAMP else ts


def parse(data: bytes | dict[str, Any]) -> tuple[float, int]:
    """(publish timestamp in seconds, sequence number) of a payload as received or read back
    (a json rule's record comes back as a dict, its numbers as floats)."""
    value = json.loads(data) if isinstance(data, bytes | bytearray) else data
    return _seconds(float(value["ts"])), int(value["seq"])


def parse_ts(data: bytes) -> float:
    """Just the timestamp, cheaply (the count-only subscriber does this per message); both
    payloads start with `{"ts":`."""
    return _seconds(float(data[6 : data.index(b",", 6)]))


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
    child_cpu: float = 0.0  # C publisher: mosquitto_pub's CPU seconds (user + system), whole life
    child_reaped: bool = False  # C publisher: child_cpu is known


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
    shape: Shape = Shape()
    broker_log: str = ""  # C publisher: the broker's log, where its connection shows

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
    shape = plan.shape
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
            info = client.publish(shape.topic(seq), shape.payload_of(seq, ts), qos=1)
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
    shape = plan.shape
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
                client.publish(shape.topic(seq), shape.payload_of(seq, ts), qos=1)
                if k == 0:
                    report.first_ts = ts
                report.last_ts = ts
                report.published += 1
            if count:
                await all_acked.wait()
    finally:
        await client.disconnect()


def find_client(name: str) -> str:
    """mosquitto_pub or mosquitto_sub (Debian's mosquitto-clients)."""
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"{name} not found (apt-get install mosquitto-clients)")
    return found


def wait_in_log(log: Path, text: str, process: "subprocess.Popen[bytes]", what: str) -> None:
    """Until `text` shows in the broker's log (a client's connection or subscription)."""
    deadline = time.monotonic() + CONNECT_TIMEOUT
    while True:
        with contextlib.suppress(FileNotFoundError):
            if text in log.read_text(errors="replace"):
                return
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode} before {text!r} showed")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: {text!r} not in the broker log after {CONNECT_TIMEOUT} s")
        time.sleep(0.01)


def reap(process: "subprocess.Popen[bytes]", timeout: float) -> tuple[int, float]:
    """Wait for a child (killing it at `timeout`): (exit code, CPU seconds) from its rusage,
    which counts its whole life, up to its last instruction. (Not its ru_maxrss: that counts the
    memory of the Python process it was forked from.)"""
    timer = threading.Timer(max(0.0, timeout), process.kill)
    timer.start()
    try:
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
    code = os.waitstatus_to_exitcode(status)
    process.returncode = code  # reaped here: tell Popen, which would wait for it again
    return code, usage.ru_utime + usage.ru_stime


def _c_publisher_main(plan: Plan, ready: Any, go: MpEvent, results: Any) -> None:
    """One C publisher: `mosquitto_pub -l -q 1` on topic `bench/dNNN/data` (NNN = index), fed
    C_LINES_PER_WRITE lines per write (one timestamp each); done when mosquitto_pub exits, which
    it does once the last message's PUBACK is in (exit code 0)."""
    report = PublisherReport(plan.index)
    client_id = f"bench-cpub-{plan.index}-{os.getpid()}"
    command = [
        find_client("mosquitto_pub"), "-h", plan.host, "-p", str(plan.port), "-q", "1", "-l",
        "-M", str(plan.window), "-t", topic(plan.index), "-i", client_id,
    ]  # fmt: skip
    process = subprocess.Popen(
        command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        _c_publish(plan, process, client_id, ready, go, report)
    except Exception as exc:  # reported to the harness, which fails the cell with it
        report.error = f"{type(exc).__name__}: {exc}"
    finally:
        if process.returncode is None:
            process.kill()
            with contextlib.suppress(Exception):
                reap(process, 5.0)
    results.put(report)


def _c_publish(
    plan: Plan, process: "subprocess.Popen[bytes]", client_id: str, ready: Any, go: MpEvent,
    report: PublisherReport,
) -> None:  # fmt: skip
    count, rate, timeout = plan.count, plan.rate, plan.timeout
    assert process.stdin is not None
    wait_in_log(Path(plan.broker_log), f" as {client_id} (", process, "mosquitto_pub")
    ready.put(plan.index)
    if not go.wait(timeout):
        raise TimeoutError(f"publisher {plan.index} was never told to start")
    deadline = time.monotonic() + timeout
    per_write = C_LINES_PER_WRITE if rate is None else max(1, min(64, int(rate / 200)))
    payload_of, seq, write = plan.shape.payload_of, plan.seq, process.stdin.write
    started = time.monotonic()
    k = 0
    while k < count:
        if rate is not None:
            ahead = started + k / rate - time.monotonic()
            if ahead > 0.001:
                time.sleep(ahead)
        n = min(per_write, count - k)
        ts = time.time()
        write(b"".join(payload_of(seq(k + j), ts) + b"\n" for j in range(n)))
        process.stdin.flush()
        if k == 0:
            report.first_ts = ts
        report.last_ts = ts
        k += n
        report.published = k
    process.stdin.close()
    code, report.child_cpu = reap(process, deadline - time.monotonic())
    report.child_reaped = True
    report.acked_at = time.time()
    if code != 0:
        stderr = process.stderr.read().decode(errors="replace") if process.stderr else ""
        raise RuntimeError(f"mosquitto_pub exited with {code}: {stderr.strip()[-500:]}")
    report.acked = report.published  # exit 0: every message was acknowledged


PUBLISHER_MAINS = {"paho": _publisher_main, "gmqtt": _gmqtt_publisher_main, "c": _c_publisher_main}


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

    @property
    def children(self) -> dict[int, float]:
        """C publishers: index -> mosquitto_pub's CPU seconds."""
        return {r.index: r.child_cpu for r in self.reports if r.child_reaped}


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
        shape: Shape = Shape(),
        broker_log: Path | None = None,
    ) -> None:
        if client == "c" and (broker_log is None or shape.topics != "bench"):
            raise ValueError("C publishers need the broker's log and the bench topics")
        if client == "c" and publishers > DEVICES:
            raise ValueError(f"at most {DEVICES} C publishers (one device topic each)")
        self.messages = messages
        self.timeout = timeout
        self._ready: Any = _MP.Queue()
        self._results: Any = _MP.Queue()
        self._go = _MP.Event()
        share = [messages // publishers + (i < messages % publishers) for i in range(publishers)]
        each_rate = None if rate is None else rate / publishers
        log = "" if broker_log is None else str(broker_log)
        plans = [
            Plan(i, host, port, publishers, share[i], each_rate, window, timeout, first_seq, shape,
                 log)
            for i in range(publishers)
        ]  # fmt: skip
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


def publish_warmup(host: str, port: int, shape: Shape = Shape()) -> int:
    """QoS 1 messages with seq -1 on the shape's warm-up topics: prove the path works (and make
    the streams a fan-out rule writes to) before timing. Returns how many were sent."""
    from tests.support.mosquitto import publish

    now = time.time()
    messages = [(name, shape.payload_of(-1, now)) for name in shape.warmup()]
    return publish(host, port, messages, timeout=CONNECT_TIMEOUT)


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


class CSubscriber:
    """The count-only C subscriber: `mosquitto_sub -q 1 -C N` on TOPIC_FILTER, printing nothing
    (`-F '' -N`, stdout to /dev/null), which exits once it has received N messages. `start()`
    returns once the broker logged its QoS 1 subscription (the broker needs `log_type subscribe`);
    `wait()` reaps it: the time it exited is the time of its last message, and its CPU comes from
    its rusage. No latencies: it counts only."""

    CLIENT_ID = "bench-csub"

    def __init__(
        self, host: str, port: int, expected: int, timeout: float, broker_log: Path
    ) -> None:
        self.expected = expected
        self.timeout = timeout
        self.broker_log = broker_log
        self.command = [
            find_client("mosquitto_sub"), "-h", host, "-p", str(port), "-t", TOPIC_FILTER,
            "-q", "1", "-C", str(expected), "-F", "", "-N", "-i", self.CLIENT_ID,
            "-W", str(int(timeout)),
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._process is not None
        return self._process.pid

    def start(self) -> None:
        self._process = subprocess.Popen(
            self.command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )  # fmt: skip
        granted = f"{self.CLIENT_ID} 1 {TOPIC_FILTER}"  # Mosquitto logs: client, QoS, filter
        wait_in_log(self.broker_log, granted, self._process, "mosquitto_sub")

    def wait(self) -> CeilingReport:
        assert self._process is not None
        report = CeilingReport()
        code, report.cpu_seconds = reap(self._process, self.timeout + 30.0)
        report.last_at = time.time()
        if code == 0:
            report.received = self.expected
        else:
            stderr = self._process.stderr.read() if self._process.stderr else b""
            report.error = (
                f"mosquitto_sub exited with {code} before {self.expected} messages "
                f"(-W {int(self.timeout)} s): {stderr.decode(errors='replace')[-300:]}"
            )
        return report

    def close(self) -> None:
        process = self._process
        if process is not None and process.returncode is None:
            process.kill()
            with contextlib.suppress(Exception):
                reap(process, 5.0)
        if process is not None and process.stderr is not None:
            process.stderr.close()
