"""A long HStreamDB outage behind a broker with a small per-client queue: memory vs disk buffer.

    .venv/bin/python -m bench.outage                              # 300,000 messages, 60 s outage
    .venv/bin/python -m bench.outage --messages 20000 --outage 5  # a quick look

For each mode (`--buffer memory`, `--buffer disk`), side by side, with fresh parts each:

1. Mosquitto on a free 127.0.0.1 port with `max_queued_messages QUEUE` (default 1000) for each
   client, as brokers are configured in production; `sys_interval 1` so that
   `$SYS/broker/publish/messages/dropped` counts what it threw away.
2. The embedded store as its own process, the bridge as its own process (`--client-id
   outage-MODE`, one rule `bench/{dev}/data` -> stream `tele`, key `${dev}`, payload raw).
   A warm-up message is stored, so the subscription, the stream and its shard exist.
3. The store is killed (SIGKILL), and stays down for `--outage` seconds.
4. Publisher processes (gmqtt, QoS 1, every PUBACK awaited: bench/_load.py) send the first half
   of `--messages` 200-byte JSON messages over 100 device topics, paced at `--rate` msg/s in
   all (see DEFAULT_RATE for why not flat out); each device belongs to one publisher, so its
   sequence numbers are published in order.
5. The bridge is killed with SIGKILL and started again with the same client id, the store still
   down (`--no-kill` skips this); then the second half is published.
6. Once `--outage` seconds have passed the store is restarted on the same port and data, and
   the bridge drains into it (until everything is stored, or nothing new came for `--stall` s).
7. The stored records are read from the store's SQLite file and counted against what was
   published: lost (never stored), duplicates, and per-device order (after dropping repeats,
   each device's sequence must be increasing); the broker's own count of dropped messages.

With the store down a memory-buffered bridge acknowledges nothing, so the broker can hold for it
only its Receive Maximum (`--receive-maximum`, unacknowledged in flight) plus its queue: the
rest is dropped ("Outgoing messages are being dropped" in the broker log). A disk-buffered
bridge acknowledges once a record is fsync'd locally, so the broker has nothing to drop.
"""

import argparse
import asyncio
import contextlib
import json
import shlex
import sqlite3
import sys
import tempfile
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion

from bench._load import DEVICES, PublisherPool, parse, publish_warmup
from bridge.hstream._api import pb
from bridge.hstream.records import decompress
from bridge.hstream.store.engine import BATCH_BITS, DB_FILE
from tests.support.bridge import BridgeProcess, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.store import StoreProcess

RESULTS = Path(__file__).resolve().parent / "results"
STREAM = "tele"
MODES = ("memory", "disk")
RULES_TOML = (
    "[[rules]]\n"
    'id = "tele"\n'
    'topic = "bench/{dev}/data"\n'
    f'stream = "{STREAM}"\n'
    'key = "${dev}"\n'
    'payload = "raw"\n'
)
DROPPED_TOPIC = "$SYS/broker/publish/messages/dropped"
DROP_NOTICE = "Outgoing messages are being dropped"
# Paced, not flat out: with max_queued_messages 1000 the broker drops whatever a subscriber
# falls more than its Receive Maximum + 1000 messages behind, and flat-out publishers (~20,000
# msg/s on the 2-core dev machine) outrun even a gmqtt subscriber that only counts (5,932 of
# 100,000 dropped). 10,000 msg/s with a Receive Maximum of 10,000 (the bridge's default is 1,000)
# leaves a second of slack for the bridge's pauses on a shared 2-core machine: at 7,500 msg/s
# with the default the broker dropped 604 of 100,000 in one run of three, with 10,000 none.
DEFAULT_RATE = 10_000.0
DEFAULT_RECEIVE_MAXIMUM = 10_000
SYS_LISTEN = 2.5  # seconds: longer than Mosquitto's $SYS period with sys_interval 1


def broker_config(queue: int) -> str:
    """Appended after tests/support/mosquitto.py's config (which sets max_queued_messages
    1000000): Mosquitto keeps the last value of a setting, so this limit is the one in force."""
    return f"max_queued_messages {queue}\nsys_interval 1\n"


def bridge_args(
    mode: str, broker: Mosquitto, store: StoreProcess, config: Path, client_id: str,
    receive_maximum: int = DEFAULT_RECEIVE_MAXIMUM,
) -> list[str]:  # fmt: skip
    return [
        "--mqtt-url", broker.url,
        "--hstream-url", store.url,
        "--client-id", client_id,
        "--config", str(config),
        "--buffer", mode,
        "--mqtt-receive-maximum", str(receive_maximum),
        "--retry-backoff-min", "0.05",
        "--retry-backoff-max", "1",
        "--append-timeout", "5",
        "--log-level", "warning",
    ]  # fmt: skip


# --- reading what was stored ----------------------------------------------------------------


def _shard_ids(conn: sqlite3.Connection, stream: str) -> list[int]:
    rows = conn.execute("SELECT id FROM shards WHERE stream = ? ORDER BY id", (stream,))
    return [row[0] for row in rows]


def _connect(data_dir: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{data_dir / DB_FILE}?mode=ro", uri=True)


def stored_count(data_dir: Path, stream: str = STREAM) -> int:
    """Records in `stream` (duplicates included), from the batch sizes: cheap to poll."""
    if not (data_dir / DB_FILE).exists():
        return 0
    with contextlib.closing(_connect(data_dir)) as conn:
        total = 0
        for shard_id in _shard_ids(conn, stream):
            low, high = shard_id << BATCH_BITS, ((shard_id + 1) << BATCH_BITS) - 1
            row = conn.execute(
                "SELECT COALESCE(SUM(batch_size), 0) FROM records WHERE pos BETWEEN ? AND ?",
                (low, high),
            ).fetchone()
            total += int(row[0])
        return total


def stored_payloads(data_dir: Path, stream: str = STREAM) -> list[list[bytes]]:
    """Each shard's record payloads in the order the store keeps them (its read order), read
    from the store's SQLite file: read-only, beside the running store, far faster than reading
    hundreds of thousands of records through gRPC."""
    with contextlib.closing(_connect(data_dir)) as conn:
        shards: list[list[bytes]] = []
        for shard_id in _shard_ids(conn, stream):
            low, high = shard_id << BATCH_BITS, ((shard_id + 1) << BATCH_BITS) - 1
            rows = conn.execute(
                "SELECT compression, payload FROM records WHERE pos BETWEEN ? AND ? ORDER BY pos",
                (low, high),
            )
            payloads: list[bytes] = []
            for compression, payload in rows:
                batch = pb.BatchHStreamRecords()
                batch.ParseFromString(decompress(payload, compression))
                payloads.extend(record.payload for record in batch.records)
            shards.append(payloads)
        return shards


def sequence_numbers(payloads: Iterable[bytes]) -> list[int]:
    """The publishers' sequence numbers, in stored order; the warm-up message (-1) left out."""
    return [seq for seq in (parse(p)[1] for p in payloads) if seq >= 0]


# --- the ledger -----------------------------------------------------------------------------


@dataclass(slots=True)
class Ledger:
    """What was stored, against `published` messages numbered 0 .. published - 1.

    Message `seq` belongs to device `seq % DEVICES`, and a device's messages are published in
    increasing `seq`. Redelivery after a crash or an outage can store a message again, so the
    order that must hold is that of first occurrences: with repeats dropped, each device's
    sequence is increasing (and, when nothing is lost, it is exactly what was published).
    """

    published: int
    records: int = 0  # stored records, repeats included
    distinct: int = 0
    duplicates: int = 0
    lost: int = 0
    lost_sample: list[int] = field(default_factory=list)
    out_of_order: int = 0  # first occurrences not above their device's previous one
    order_sample: list[tuple[int, int, int]] = field(default_factory=list)  # (device, prev, seq)
    foreign: int = 0  # numbers outside 0 .. published - 1
    devices_with_duplicates: int = 0


def take_ledger(shards: Iterable[Iterable[int]], published: int) -> Ledger:
    ledger = Ledger(published)
    seen: set[int] = set()
    last: dict[int, int] = {}
    repeated: set[int] = set()
    for seqs in shards:  # a device's records all land in one shard (the key is the device)
        for seq in seqs:
            ledger.records += 1
            if not 0 <= seq < published:
                ledger.foreign += 1
                continue
            device = seq % DEVICES
            if seq in seen:
                ledger.duplicates += 1
                repeated.add(device)
                continue
            seen.add(seq)
            previous = last.get(device, -1)
            if seq <= previous:
                ledger.out_of_order += 1
                if len(ledger.order_sample) < 10:
                    ledger.order_sample.append((device, previous, seq))
            last[device] = seq
    ledger.distinct = len(seen)
    ledger.lost = published - len(seen)
    if ledger.lost:
        ledger.lost_sample = [n for n in range(published) if n not in seen][:20]
    ledger.devices_with_duplicates = len(repeated)
    return ledger


def read_ledger(data_dir: Path, published: int) -> Ledger:
    return take_ledger((sequence_numbers(s) for s in stored_payloads(data_dir)), published)


# --- what the broker says -------------------------------------------------------------------


class DropWatch:
    """Follows `$SYS/broker/publish/messages/dropped`: the messages Mosquitto discarded because
    a client's queue was full. Start it right after the broker: the broker publishes the value
    (retained, but expiring after 60 s) only when it changed, at most every `sys_interval`
    seconds and in practice every other second, so a late subscriber may get nothing.

        with DropWatch(broker) as drops:
            ...
            drops.count()   # waits SYS_LISTEN s for a pending update: counts every drop before
    """

    def __init__(self, broker: Mosquitto) -> None:
        self._value: int | None = None
        self._client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *a: c.subscribe(DROPPED_TOPIC)
        self._host, self._port = broker.host, broker.port

    def _on_message(self, client: object, userdata: object, message: paho.MQTTMessage) -> None:
        self._value = int(message.payload)

    def latest(self) -> int | None:
        """The last value the broker published, without waiting for a pending one."""
        return self._value

    def count(self, listen: float = SYS_LISTEN) -> int:
        """Blocking: call through asyncio.to_thread from async code."""
        time.sleep(listen)
        if self._value is None:
            raise TimeoutError(f"no {DROPPED_TOPIC} from the broker yet")
        return self._value

    def __enter__(self) -> "DropWatch":
        self._client.connect(self._host, self._port, keepalive=30)
        self._client.loop_start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._client.disconnect()
        self._client.loop_stop()


def drop_notices(broker: Mosquitto) -> int:
    """Lines of the broker log that say it started dropping messages for a client (one per
    episode, not per message)."""
    try:
        text = broker.log_file.read_text(errors="replace")
    except FileNotFoundError:
        return 0
    return sum(DROP_NOTICE in line for line in text.splitlines())


# --- the bridge -----------------------------------------------------------------------------


async def readiness(bridge: BridgeProcess) -> dict[str, object] | None:
    """The /ready body (whatever the status), or None when the API does not answer."""
    try:
        async with httpx.AsyncClient(timeout=2.0) as http:
            response = await http.get(f"{bridge.api_url}/ready")
        body = response.json()
    except (httpx.HTTPError, ValueError):
        return None
    return body if isinstance(body, dict) else None


async def start_connected(bridge: BridgeProcess, timeout: float = 30.0) -> None:
    """Start the bridge and wait until it is connected to the broker. With the store down a
    memory-buffered bridge is not ready (503), so `BridgeProcess.start` would wait in vain."""
    with contextlib.suppress(AssertionError):
        await bridge.start(timeout=0.05)  # spawns, then gives up on 200 at once

    async def connected() -> bool:
        assert bridge.process is not None
        if bridge.process.poll() is not None:
            raise AssertionError(f"bridge exited: {bridge.log_tail()}")
        body = await readiness(bridge)
        return body is not None and body.get("mqtt") is True

    await wait_until(connected, timeout, "the bridge to connect to the broker")


GAUGES = (
    "hstream_bridge_queuing_records",
    "hstream_bridge_intake_paused",
    "hstream_bridge_disk_buffer_backlog_records",
    "hstream_bridge_disk_buffer_written_records_total",
    "hstream_bridge_disk_buffer_forwarded_records_total",
    "hstream_bridge_disk_buffer_accepting",
)


async def pipeline_gauges(bridge: BridgeProcess) -> str:
    """The bridge's buffer gauges from /metrics, to say where records wait when a run stalls."""
    try:
        text = await bridge.metrics()
    except httpx.HTTPError as exc:
        return f"(no metrics: {exc})"
    found = [line for line in text.splitlines() if line.split(" ")[0] in GAUGES]
    return ", ".join(found) or "(none of the buffer gauges)"


def stop(bridge: BridgeProcess) -> None:
    if bridge.process is not None and bridge.process.poll() is None:
        bridge.kill()


# --- one mode -------------------------------------------------------------------------------


def halves(messages: int, publishers: int) -> tuple[int, int]:
    """Messages before and after the bridge's restart: the first a multiple of `publishers`, so
    that each device keeps its publisher (device = seq % DEVICES, publisher = seq % publishers)."""
    first = messages // 2 // publishers * publishers
    return first, messages - first


def publish_range(
    broker: Mosquitto, first_seq: int, count: int, *, publishers: int, rate: float | None,
    timeout: float,
) -> float:  # fmt: skip
    """Publish messages first_seq .. first_seq + count - 1 (every PUBACK awaited); the seconds
    from the start signal to the last PUBACK. Blocking: call through asyncio.to_thread."""
    if DEVICES % publishers or first_seq % publishers:
        raise ValueError("each device must keep one publisher: publishers | DEVICES, first_seq")
    pool = PublisherPool(
        broker.host, broker.port, messages=count, publishers=publishers, rate=rate,
        timeout=timeout, first_seq=first_seq,
    )  # fmt: skip
    try:
        pool.connect()
        started = time.monotonic()
        pool.start()
        load = pool.wait()
        seconds = time.monotonic() - started
    finally:
        pool.close()
    if load.errors or load.published != count:
        raise RuntimeError(f"publishers sent {load.published} of {count}: {load.errors}")
    return seconds


def write_rules(directory: Path) -> Path:
    """The bridge's config file (the one rule) in a new `directory`."""
    directory.mkdir(parents=True)
    config = directory / "bridge.toml"
    config.write_text(RULES_TOML)
    return config


@dataclass(slots=True)
class Row:
    mode: str
    published: int = 0
    ledger: Ledger | None = None
    broker_dropped: int = 0
    drop_notices: int = 0
    publish_seconds: float = 0.0  # both halves
    kill_at: float = 0.0  # seconds into the outage
    drain_seconds: float = 0.0  # store restart to the last record stored
    total_seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    error: str = ""


async def run_mode(mode: str, args: argparse.Namespace, workdir: Path) -> Row:
    row = Row(mode)
    started = time.monotonic()
    config = write_rules(workdir)
    rate = args.rate or None
    before, after = halves(args.messages, args.publishers)
    with (
        Mosquitto(workdir / "broker", extra_config=broker_config(args.queue)) as broker,
        DropWatch(broker) as drops,
    ):
        store = StoreProcess(workdir / "store")
        await store.start()
        extra = shlex.split(args.bridge_args)
        bridge = BridgeProcess(
            workdir / "bridge",
            bridge_args(mode, broker, store, config, f"outage-{mode}", args.receive_maximum)
            + extra,
        )
        try:
            await bridge.start()
            await asyncio.to_thread(publish_warmup, broker.host, broker.port)
            await wait_until(lambda: stored_count(store.data_dir) >= 1, 30, "the warm-up record")
            store.kill()
            outage_started = time.monotonic()
            row.publish_seconds = await asyncio.to_thread(
                publish_range, broker, 0, before, publishers=args.publishers, rate=rate,
                timeout=args.timeout,
            )  # fmt: skip
            if args.kill:
                row.kill_at = time.monotonic() - outage_started
                bridge.kill()
                await start_connected(bridge)
            row.publish_seconds += await asyncio.to_thread(
                publish_range, broker, before, after, publishers=args.publishers, rate=rate,
                timeout=args.timeout,
            )  # fmt: skip
            row.published = args.messages
            if time.monotonic() - outage_started > args.outage:
                raise RuntimeError(
                    f"publishing and the restart took {time.monotonic() - outage_started:.0f} s,"
                    f" longer than the outage ({args.outage:g} s): raise --outage or --rate"
                )
            await asyncio.sleep(max(0.0, outage_started + args.outage - time.monotonic()))
            await store.start()
            restarted = time.monotonic()
            last_change, last_count = restarted, -1
            deadline = restarted + args.timeout
            while time.monotonic() < deadline:
                count = stored_count(store.data_dir)
                if count != last_count:
                    last_change, last_count = time.monotonic(), count
                if count >= args.messages + 1:  # + the warm-up
                    break
                if time.monotonic() - last_change > args.stall:
                    break
                if bridge.process is None or bridge.process.poll() is not None:
                    raise RuntimeError(f"bridge exited: {bridge.log_tail()}")
                await asyncio.sleep(0.2)
            row.drain_seconds = last_change - restarted
            if last_count < args.messages + 1:
                row.notes.append(
                    f"stored count stopped at {last_count:,} records (incl. the warm-up; nothing "
                    f"new for {args.stall:g} s); bridge gauges then: "
                    + await pipeline_gauges(bridge)
                )
            row.ledger = await asyncio.to_thread(read_ledger, store.data_dir, args.messages)
            row.broker_dropped = await asyncio.to_thread(drops.count)
            row.drop_notices = drop_notices(broker)
            await bridge.terminate()
        finally:
            stop(bridge)
            store.kill()
    row.total_seconds = time.monotonic() - started
    return row


# --- the report -----------------------------------------------------------------------------


def render(args: argparse.Namespace, rows: list[Row]) -> str:
    command = ".venv/bin/python -m bench.outage " + shlex.join(args.argv)
    pace = f"paced at {args.rate:,.0f} msg/s in all" if args.rate else "as fast as they can"
    lines = [
        "## A long store outage behind a small broker queue: memory vs disk buffer",
        "",
        f"{args.messages:,} QoS 1 messages from {args.publishers} publisher processes, {pace}, "
        f"over {DEVICES} devices; store down for {args.outage:g} s from just before the first "
        f"message; Mosquitto `max_queued_messages {args.queue}`; the bridge with "
        f"`--mqtt-receive-maximum {args.receive_maximum}`"
        + (
            ", killed with SIGKILL once the first half is published, restarted (same client id, "
            "store still down), then the second half."
            if args.kill
            else " (not killed)."
        ),
        "",
        "| mode | published | stored (distinct) | lost | duplicates | out of order "
        "| broker dropped | drop notices in broker log | publish s | kill at s | drain s "
        "| total s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        if row.error or row.ledger is None:
            lines.append(f"| {row.mode} | FAILED: {row.error} |" + " |" * 10)
            continue
        led = row.ledger
        lines.append(
            f"| {row.mode} | {row.published:,} | {led.distinct:,} | {led.lost:,} "
            f"| {led.duplicates:,} | {led.out_of_order:,} | {row.broker_dropped:,} "
            f"| {row.drop_notices:,} | {row.publish_seconds:.1f} "
            f"| {f'{row.kill_at:.1f}' if args.kill else '-'} "
            f"| {row.drain_seconds:.1f} | {row.total_seconds:.0f} |"
        )
    lines += [
        "",
        "lost = published but never stored; broker dropped = Mosquitto's "
        f'`{DROPPED_TOPIC}`; drop notices = log lines "{DROP_NOTICE}" (one per episode).',
        "",
        f"Reproduce: `{command}`",
        "",
    ]
    for row in rows:
        for note in row.notes:
            lines.append(f"- {row.mode}: {note}")
        if row.ledger is not None and (row.ledger.lost_sample or row.ledger.order_sample):
            lines.append(
                f"- {row.mode}: first lost {row.ledger.lost_sample[:10]}, order breaks (device, "
                f"previous, seq) {row.ledger.order_sample[:5]}"
            )
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Memory vs disk buffer through a long store outage behind a broker whose "
        "per-client queue is small."
    )
    parser.add_argument("--messages", type=int, default=300_000, help="QoS 1 messages")
    parser.add_argument("--outage", type=float, default=60.0, help="seconds the store is down")
    parser.add_argument("--queue", type=int, default=1000, help="broker max_queued_messages")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument(
        "--rate", type=float, default=DEFAULT_RATE,
        help="msg/s of all publishers together; 0: as fast as they can",
    )  # fmt: skip
    parser.add_argument(
        "--receive-maximum", type=int, default=DEFAULT_RECEIVE_MAXIMUM,
        help="the bridge's --mqtt-receive-maximum (both modes)",
    )  # fmt: skip
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated: memory,disk")
    parser.add_argument(
        "--no-kill", dest="kill", action="store_false",
        help="do not kill and restart the bridge between the halves",
    )  # fmt: skip
    parser.add_argument("--bridge-args", default="", help="extra flags for `bridge run`")
    parser.add_argument(
        "--stall", type=float, default=10.0,
        help="after the store is back, stop waiting once nothing was stored for this long",
    )  # fmt: skip
    parser.add_argument("--timeout", type=float, default=300.0, help="bound on each wait")
    parser.add_argument("--output", type=Path, default=RESULTS / "outage.md")
    parser.add_argument("--keep", action="store_true", help="keep the logs and data files")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows as JSON")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    if unknown := sorted(set(args.mode_list) - set(MODES)):
        parser.error(f"unknown modes {unknown}; known: {', '.join(MODES)}")
    if DEVICES % args.publishers:
        parser.error(f"--publishers must divide {DEVICES}: each device needs one publisher")
    if args.messages < 1 or args.outage <= 0 or args.queue < 1:
        parser.error("--messages, --outage and --queue must be positive")
    return args


async def run(args: argparse.Namespace) -> int:
    rows: list[Row] = []
    with contextlib.ExitStack() as stack:
        if args.keep:
            tmp = tempfile.mkdtemp(prefix="bench-outage-")
            print(f"-- files (kept): {tmp}", file=sys.stderr, flush=True)
        else:
            tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-outage-"))
        for mode in args.mode_list:
            print(f"-- {mode} ...", file=sys.stderr, flush=True)
            try:
                row = await run_mode(mode, args, Path(tmp) / mode)
            except Exception as exc:
                traceback.print_exc()
                row = Row(mode, error=f"{type(exc).__name__}: {exc}")
            print(f"   {mode}: {row.total_seconds:.0f} s", file=sys.stderr, flush=True)
            rows.append(row)
    text = render(args, rows)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    if args.json is not None:
        args.json.write_text(json.dumps([_row_json(r) for r in rows], indent=2))
    return 1 if any(r.error for r in rows) else 0


def _row_json(row: Row) -> dict[str, object]:
    led = row.ledger
    return {
        "mode": row.mode,
        "published": row.published,
        "stored": led.distinct if led else None,
        "records": led.records if led else None,
        "lost": led.lost if led else None,
        "duplicates": led.duplicates if led else None,
        "out_of_order": led.out_of_order if led else None,
        "broker_dropped": row.broker_dropped,
        "drop_notices": row.drop_notices,
        "error": row.error,
    }


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
