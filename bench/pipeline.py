"""End-to-end benchmark: publishers -> Mosquitto -> X -> the embedded store, side by side.

    .venv/bin/python -m bench.pipeline                       # default cells, 200,000 messages each
    .venv/bin/python -m bench.pipeline --quick               # smoke run, 20,000 messages
    .venv/bin/python -m bench.pipeline --cells bridge --profile py-spy
    .venv/bin/python -m bench.pipeline --cells bridge,bridge-disk,latency,latency-disk
    .venv/bin/python -m bench.pipeline --payload telemetry --publishers-client c --publishers 4 \
        --cells ceiling,ceiling-c,bridge,bridge-json,bridge@gmqtt,fanout

Every cell gets a fresh Mosquitto (own config, free 127.0.0.1 port, no in-flight or queue
limits) and, where records are stored, a fresh store subprocess
(`python -m bridge.hstream.store`) holding a pre-created stream `bench`. Publisher processes
(gmqtt, one connection each, QoS 1, every PUBACK awaited, 1000 in flight per connection) send
200-byte JSON payloads that carry their publish time and a sequence number, on
`bench/dNNN/data` for 100 devices. `--payload telemetry` sends a realistic ~170-byte telemetry
reading instead (publish time in ms, device, values and sequence number varying; bench/_load.py).
`--publishers-client c` publishes with `mosquitto_pub -l -q 1` processes fed one message per line
(one topic per process: `bench/d000/data`, `bench/d001/data`, ...); their CPU is reported with
the feeding processes'. A cell name may end in `@CLIENT` to use other publishers for that cell
(`bridge@gmqtt`). Cells:

- ceiling: a gmqtt subscriber (MQTT 5, QoS 1) that only counts: what broker and publishers allow.
- ceiling-c: `mosquitto_sub -q 1 -C N` printing nothing (the real limit: a C subscriber that
  counts), started and subscribed (its QoS 1 subscription seen in the broker's log) before the
  publishers start; msg/s is N / (its exit - first publish), CPU from its rusage.
- bridge: `python -m bridge run` with one rule `bench/{dev}/data` -> stream `bench`, key `${dev}`,
  payload raw; bridge-json: the same with payload json (a protobuf Struct per record).
- reference: `bench/reference_bridge.py`, paho-mqtt + the official client's BufferedProducer,
  which acks before the store confirms (at-most-once).
- latency: the bridge again, with publishers paced at half the bridge's measured peak.
- fanout (not in the default run): 10,000 device topics `fleet/site-SSS/dev-DDDD/telemetry`
  through the rule `fleet/{site}/{device}/telemetry` -> stream `fleet_${site}` (100 streams the
  bridge creates with `--stream-shards`, default 4), key `${device}`, payload raw; one warm-up
  message per site creates the streams before the timed part. Needs publishers that vary the
  topic: with `--publishers-client c` it uses gmqtt. Compared with the `bridge` cell of the same
  publishers (target: >= 0.8x its msg/s); the bridge's peak RSS is set against its byte budget
  (`--buffer-bytes`, read from its /metrics) and the most it had buffered (peak queuing_bytes).
- bridge-disk, latency-disk (not in the default run): the bridge and latency cells again with
  `--buffer disk`: each message is acknowledged once its record is fsync'd to the bridge's
  buffer (under its data dir, in the same temporary directory as the memory-mode cells' and so
  on the same disk), and a forwarder appends it to the store. latency-disk is paced at half of
  bridge-disk's peak (half of bridge's when bridge-disk did not run). "Stored" still means in
  the store: rates and latencies come from the records read back from it. The disk buffer's
  fsyncs and records written are scraped from the bridge's /metrics
  (hstream_bridge_disk_buffer_*) before the publishers start and after the last record is
  stored; fsyncs/s is over the same span as msg/s. The ratios compare bridge-disk with bridge
  of the same run (target: >= 0.8x the msg/s).

bridge-json is compared with bridge (same publishers, same payload): targets >= 0.85x the msg/s
and <= 1.3x the CPU per message.

msg/s is N / (last record's store time - first publish time); publish-to-stored latency is the
store's `publish_time` (stamped at append, ms) minus the payload's timestamp, over every record
read back; CPU seconds (user + system) and peak RSS (sampled every 50 ms) are of the process
under test, from just before the publishers start until the last record is stored. Saturated
cells (publishers faster than X) measure throughput: their latencies are mostly time spent
queued in the broker. The latency cell is the one that says how fast a record gets through.
Results: stdout and bench/results/pipeline.md (profiles next to it).
"""

import argparse
import asyncio
import collections
import contextlib
import os
import platform
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench._load import (
    FLEET_SITES,
    PAYLOADS,
    CeilingReport,
    CeilingSubscriber,
    CSubscriber,
    LoadResult,
    PublisherPool,
    Shape,
    parse,
    publish_warmup,
)
from bench._profile import PySpy, top_self_cprofile, top_self_folded
from bench._targets import BridgeTarget, ReferenceTarget, Target, fleet_rules_toml
from bench._watch import Usage, Watch
from bridge.hstream.client import HStreamClient
from tests.support.mosquitto import Mosquitto, find_mosquitto
from tests.support.store import REPO_ROOT, StoreProcess

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CELLS = ("ceiling", "ceiling-c", "bridge", "bridge-json", "reference", "latency")
ALL_CELLS = (*DEFAULT_CELLS, "bridge-disk", "latency-disk", "fanout")
PROFILED_CELLS = ("bridge", "bridge-json", "bridge-disk", "fanout")
CLIENTS = ("gmqtt", "paho", "c")
DISK_TARGET = 0.8  # bridge-disk msg/s at least this share of bridge's
JSON_RATE_TARGET = 0.85  # bridge-json msg/s at least this share of bridge's
JSON_CPU_TARGET = 1.3  # bridge-json CPU per message at most this multiple of bridge's
FANOUT_TARGET = 0.8  # fanout msg/s at least this share of bridge's (same publishers)
STREAM = "bench"
FLEET_STREAM_PREFIX = "fleet_"
TIMELINE_STEP = 0.1  # seconds per row of --timeline
# How often the bridge's /metrics is read while a cell runs (to see it done). A scrape costs the
# bridge 1-3 ms, more with more streams: every 50 ms that was ~5% of its CPU in the fan-out, a
# cost of the measurement. Rates come from the records read back, not from this.
POLL_INTERVAL = 0.2
# Mosquitto's test config already lifts the in-flight and queue limits; say so explicitly here
# too, so the broker queues for a slow subscriber instead of dropping.
# `log_type subscribe` logs each subscription with its QoS: how ceiling-c knows mosquitto_sub
# is subscribed before the publishers start.
BROKER_CONFIG = (
    "max_inflight_messages 0\nmax_queued_messages 10000000\nmax_queued_bytes 0\n"
    "log_type subscribe\n"
)


@dataclass(slots=True)
class CellResult:
    name: str
    messages: int
    rate: float = 0.0
    p50: float = 0.0  # seconds
    p99: float = 0.0
    cpu: float = 0.0
    rss: float = 0.0  # MB
    stored: int = 0
    duplicates: int = 0
    usage: dict[str, Usage] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    timeline: list[tuple[float, int, int]] = field(default_factory=list)
    buffered: dict[int, tuple[int, bool]] = field(default_factory=dict)  # step -> bridge gauges
    error: str = ""
    cell: str = ""  # the --cells name
    span: float = 0.0  # seconds from the first publish to the last record stored
    rate_target: float = 0.0  # msg/s the publishers were paced at (0: as fast as they can)
    disk: bool = False  # the bridge ran with --buffer disk
    written: int = 0  # records written to the disk buffer during the cell
    fsyncs: int = 0  # the disk buffer's fsyncs during the cell
    client: str = ""  # the publishers' client
    has_latency: bool = True  # False for the count-only C subscriber
    published: int = 0  # messages the publishers sent (and had acknowledged)
    budget: int = 0  # the bridge's --buffer-bytes (bytes)
    peak_queued: int = 0  # the most the bridge had buffered (queuing_bytes), bytes

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu / self.messages * 1000 if self.messages else 0.0

    @property
    def fsync_rate(self) -> float:
        return self.fsyncs / self.span if self.span else 0.0

    @property
    def per_fsync(self) -> float:
        return self.written / self.fsyncs if self.fsyncs else 0.0


@dataclass(slots=True)
class Context:
    args: argparse.Namespace
    workdir: Path
    profiles: list[str] = field(default_factory=list)
    bridge_peak: float = 0.0
    bridge_disk_peak: float = 0.0
    encoder: str = ""  # json_encoder() at the start of the run


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- environment of one cell ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_and_store(
    ctx: Context, cell: str, with_store: bool, create_stream: bool = True
) -> AsyncIterator[tuple[Mosquitto, StoreProcess | None]]:
    """A fresh broker and (optionally) a fresh store with the stream `bench` (unless
    create_stream is False: the fan-out's streams are made by the bridge); both stopped after."""
    directory = ctx.workdir / cell
    directory.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(directory / "mosquitto", extra_config=BROKER_CONFIG)
    store: StoreProcess | None = None
    try:
        broker.start()
        if with_store:
            store = StoreProcess(directory / "store")
            await store.start()
            if create_stream:
                async with HStreamClient(store.url) as client:
                    await client.create_stream(STREAM, shard_count=ctx.args.shards)
        yield broker, store
    finally:
        if store is not None:
            store.kill()
        broker.close()


async def read_back(store: StoreProcess, streams: list[str]) -> list[tuple[float, float, int]]:
    """(store publish_time, payload timestamp, seq) of every record in `streams`, warm-up
    excluded."""
    rows: list[tuple[float, float, int]] = []
    async with HStreamClient(store.url) as client:
        for stream in streams:
            async with client.read_stream(stream) as reader:
                async for record in reader:
                    ts, seq = parse(record.payload)
                    if seq >= 0:
                        rows.append((record.publish_time, ts, seq))
    return rows


async def fleet_streams(store: StoreProcess) -> dict[str, int]:
    """The fan-out's streams in the store and their shard counts."""
    async with HStreamClient(store.url) as client:
        names = [s.name for s in await client.list_streams()]
        return {
            name: len(await client.list_shards(name))
            for name in sorted(names)
            if name.startswith(FLEET_STREAM_PREFIX)
        }


def summarise(result: CellResult, rows: list[tuple[float, float, int]], start: float) -> None:
    """Fill rate, latencies, stored and duplicate counts from the records read back."""
    seqs = {seq for _, _, seq in rows}
    result.stored = len(seqs)
    result.duplicates = len(rows) - len(seqs)
    if not rows:
        return
    end = max(stored_at for stored_at, _, _ in rows)
    result.span = max(0.0, end - start)
    result.rate = len(seqs) / (end - start) if end > start else 0.0
    latencies = sorted(stored_at - ts for stored_at, ts, _ in rows)
    result.p50, result.p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    published = collections.Counter(int((ts - start) / TIMELINE_STEP) for _, ts, _ in rows)
    stored = collections.Counter(int((at - start) / TIMELINE_STEP) for at, _, _ in rows)
    result.timeline = [
        (step * TIMELINE_STEP, published.get(step, 0), stored.get(step, 0))
        for step in range(max(max(published), max(stored)) + 1)
    ]
    if result.stored < result.messages:
        result.notes.append(f"LOST {result.messages - result.stored} of {result.messages}")
    if result.duplicates:
        result.notes.append(f"{result.duplicates} duplicates")


async def wait_progress(
    target: Target, expected: int, publishing: "asyncio.Task[LoadResult]", ctx: Context
) -> None:
    """Until `expected` are stored; give up at the cell deadline, or when the publishers are
    done and nothing was stored for --stall-seconds (then the summary shows what is missing)."""
    deadline = time.monotonic() + ctx.args.cell_timeout
    last, last_change = -1, time.monotonic()
    while (stored := await target.stored()) < expected:
        target.check_alive()
        now = time.monotonic()
        if stored != last:
            last, last_change = stored, now
        if publishing.done():
            publishing.result()  # a publisher error ends the cell here
            if now - last_change > ctx.args.stall_seconds:
                return
        if now > deadline:
            raise TimeoutError(
                f"cell limit: {stored} of {expected} stored after {ctx.args.cell_timeout} s "
                f"(--cell-timeout)\n{target.log_tail()}"
            )
        await asyncio.sleep(POLL_INTERVAL)


async def finish_publishers(publishing: "asyncio.Task[LoadResult]") -> LoadResult:
    load = await publishing
    if load.errors:
        raise RuntimeError("publisher failed: " + "; ".join(load.errors))
    return load


def start_publishers(
    ctx: Context, broker: Mosquitto, messages: int, rate: float | None, client: str, shape: Shape
) -> PublisherPool:
    pool = PublisherPool(
        broker.host, broker.port, messages=messages, publishers=ctx.args.publishers, rate=rate,
        window=ctx.args.window, timeout=ctx.args.cell_timeout, client=client, shape=shape,
        broker_log=broker.log_file,
    )  # fmt: skip
    pool.connect()
    return pool


def add_publisher_usage(result: CellResult, load: LoadResult) -> None:
    """The C publishers' mosquitto_pub children (CPU from their rusage) next to their feeders."""
    for index, cpu in load.children.items():
        result.usage[f"publisher{index}-mosquitto_pub"] = Usage(cpu)
    result.published = load.published
    if load.published != result.messages:
        result.notes.append(f"publishers sent {load.published:,} of {result.messages:,}")


# --- cells ---------------------------------------------------------------------------------


async def ceiling_cell(ctx: Context, cell: str, title: str, client: str) -> CellResult:
    messages = ctx.args.messages
    shape = Shape(ctx.args.payload)
    result = CellResult(title, messages)
    async with broker_and_store(ctx, cell, with_store=False) as (broker, _):
        subscriber = CeilingSubscriber(broker.host, broker.port, messages, ctx.args.cell_timeout)
        try:
            await asyncio.to_thread(subscriber.start)
            await asyncio.to_thread(publish_warmup, broker.host, broker.port, shape)
            if not await asyncio.to_thread(subscriber.warm.wait, 10.0):
                raise TimeoutError("the warm-up message did not reach the subscriber")
            report, load = await publish_to(ctx, broker, subscriber, client, shape, result)
        finally:
            subscriber.close()
    if report.error:
        raise RuntimeError(f"ceiling subscriber: {report.error}")
    result.stored = report.received
    result.rate = report.received / (report.last_at - load.start)
    latencies = sorted(report.latencies)
    result.p50, result.p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    result.cpu = report.cpu_seconds
    result.rss = result.usage["subscriber"].peak_rss_mb
    add_publisher_usage(result, load)
    result.notes.append("latency = publish to receive (nothing stored)")
    return result


async def publish_to(
    ctx: Context,
    broker: Mosquitto,
    subscriber: CeilingSubscriber | CSubscriber,
    client: str,
    shape: Shape,
    result: CellResult,
) -> tuple[CeilingReport, LoadResult]:
    """Run the publishers against a started ceiling subscriber, watching every process; the
    subscriber's report and the publishers' load."""
    with start_publishers(ctx, broker, result.messages, None, client, shape) as pool:
        pids = {"subscriber": subscriber.pid, "broker": broker_pid(broker)}
        pids |= {f"publisher{i}": pid for i, pid in enumerate(pool.pids)}
        watch = Watch(pids)
        watch.start()
        pool.start()
        report = await asyncio.to_thread(subscriber.wait)
        result.usage = watch.stop()
        load = await finish_publishers(asyncio.create_task(asyncio.to_thread(pool.wait)))
    return report, load


async def ceiling_c_cell(ctx: Context, cell: str, title: str, client: str) -> CellResult:
    """`mosquitto_sub -q 1 -C N`, subscribed before the publishers connect; no warm-up message
    (it prints nothing, so one could not be seen): every message it counts is a timed one."""
    messages = ctx.args.messages
    shape = Shape(ctx.args.payload)
    result = CellResult(title, messages, has_latency=False)
    async with broker_and_store(ctx, cell, with_store=False) as (broker, _):
        subscriber = CSubscriber(
            broker.host, broker.port, messages, ctx.args.cell_timeout, broker.log_file
        )
        try:
            await asyncio.to_thread(subscriber.start)
            report, load = await publish_to(ctx, broker, subscriber, client, shape, result)
        finally:
            subscriber.close()
    if report.error:
        raise RuntimeError(f"ceiling-c subscriber: {report.error}")
    result.stored = report.received
    result.rate = report.received / (report.last_at - load.start)
    # CPU from its rusage (to its last instruction; the watch may miss its last 50 ms); RSS as
    # sampled (rusage's maxrss would count the harness's memory it was forked with).
    sampled = result.usage["subscriber"]
    result.usage["subscriber"] = Usage(report.cpu_seconds, sampled.peak_rss)
    result.cpu, result.rss = report.cpu_seconds, sampled.peak_rss_mb
    add_publisher_usage(result, load)
    result.notes.append("count only: no latency; CPU from its rusage (whole life)")
    return result


def broker_pid(broker: Mosquitto) -> int:
    process = broker._process  # the benchmark watches the broker's CPU
    assert process is not None
    return process.pid


async def store_cell(
    ctx: Context,
    cell: str,
    title: str,
    make_target: Callable[[Path, Mosquitto, StoreProcess], Target],
    *,
    messages: int,
    client: str,
    rate: float | None = None,
    profile: bool = False,
    shape: Shape | None = None,
) -> CellResult:
    """One cell with a store: start X, warm up, publish, wait until all are stored, read back.

    With the fleet topics the streams are the bridge's (`fleet_*`, made at the warm-up)."""
    shape = shape or Shape(ctx.args.payload)
    fleet = shape.topics == "fleet"
    result = CellResult(title, messages, client=client)
    async with broker_and_store(ctx, cell, with_store=True, create_stream=not fleet) as (
        broker,
        store,
    ):
        assert store is not None
        target = make_target(ctx.workdir / cell, broker, store)
        spy: PySpy | None = None
        try:
            await target.start()
            warmups = await asyncio.to_thread(publish_warmup, broker.host, broker.port, shape)
            await target.wait_stored(warmups, 60.0, f"{warmups} warm-up message(s)")
            with start_publishers(ctx, broker, messages, rate, client, shape) as pool:
                pids = {target.name: target.pid, "broker": broker_pid(broker)}
                pids |= {"store": store.pid or 0}
                pids |= {f"publisher{i}": pid for i, pid in enumerate(pool.pids)}
                watch = Watch(pids)
                disk = isinstance(target, BridgeTarget) and target.buffer == "disk"
                disk_before = (0, 0)
                if isinstance(target, BridgeTarget) and disk:
                    disk_before = await target.disk_counters()  # the warm-up's write excluded
                if profile and ctx.args.profile == "py-spy":
                    spy = PySpy(target.pid, RESULTS / f"{cell}.folded")
                    spy.start()
                watch.start()
                pool.start()
                publishing = asyncio.create_task(asyncio.to_thread(pool.wait))
                try:
                    await wait_progress(target, messages + warmups, publishing, ctx)
                finally:
                    result.usage = watch.stop()
                    if spy is not None:
                        spy.stop()
                load = await finish_publishers(publishing)
            add_publisher_usage(result, load)
            if isinstance(target, BridgeTarget):
                result.budget, result.peak_queued = target.budget_bytes, target.peak_queued_bytes
                problems = {k: v for k, v in (await target.problems()).items() if v}
                if problems:
                    result.notes.append(f"bridge metrics: {problems}")
                result.notes.append(await target.batching())
                if disk:
                    written, fsyncs = await target.disk_counters()
                    result.disk = True
                    result.written = written - disk_before[0]
                    result.fsyncs = fsyncs - disk_before[1]
            if isinstance(target, ReferenceTarget) and target.failed:
                result.notes.append(f"{target.failed} records failed to append")
        finally:
            code = await asyncio.to_thread(target.stop)
            if code not in (0, None) and not (isinstance(target, BridgeTarget) and code < 0):
                result.notes.append(f"{target.name} exited with {code}")
            await target.aclose()
            with contextlib.suppress(OSError):
                shutil.copyfile(target.log_path, RESULTS / f"{cell}.log")
            if isinstance(target, ReferenceTarget) and (empty := target.empty_flushes()):
                result.notes.append(f'producer logged "Empty payloads, ignored." {empty} times')
        streams = [STREAM]
        if fleet:
            shards = await fleet_streams(store)
            streams = list(shards)
            counts = collections.Counter(shards.values())
            result.notes.append(
                ", ".join(f"{n} streams of {k} shards" for k, n in sorted(counts.items()))
            )
        rows = await read_back(store, streams)
    summarise(result, rows, load.start)
    if result.disk:
        result.notes.append(
            f"disk buffer: {result.fsyncs:,} fsyncs, {result.fsync_rate:,.0f}/s, "
            f"{result.per_fsync:.1f} records per fsync"
        )
    if isinstance(target, BridgeTarget):
        for at, queued, paused in target.samples:
            if at >= load.start:
                result.buffered[int((at - load.start) / TIMELINE_STEP)] = (queued, paused)
    usage = result.usage[target.name]
    result.cpu, result.rss = usage.cpu_seconds, usage.peak_rss_mb
    if profile:
        report_profile(ctx, cell, target)
    return result


def report_profile(ctx: Context, cell: str, target: Target) -> None:
    if ctx.args.profile == "py-spy":
        path = RESULTS / f"{cell}.folded"
        top = top_self_folded(path)
        title = f"py-spy, {cell}: top functions by self time (share of samples); stacks in {path}"
    else:
        assert isinstance(target, BridgeTarget)
        assert target.cprofile is not None
        if not target.cprofile.exists():
            ctx.profiles.append(f"cProfile wrote no stats for {cell} (the bridge did not exit)")
            return
        top = top_self_cprofile(target.cprofile)
        title = f"cProfile, {cell}: top functions by tottime; stats in {target.cprofile}"
    lines = [title, "", "| self | function |", "|---:|---|"]
    lines += [f"| {share:6.1%} | `{frame}` |" for frame, share in top]
    ctx.profiles.append("\n".join(lines))


def bridge_factory(
    ctx: Context, payload: str, cell: str, profile: bool, buffer: str = "memory",
    fleet: bool = False,
) -> Callable[[Path, Mosquitto, StoreProcess], Target]:  # fmt: skip
    def make(workdir: Path, broker: Mosquitto, store: StoreProcess) -> Target:
        cprofiled = profile and ctx.args.profile == "cprofile"
        cprofile = RESULTS / f"{cell}.pstats" if cprofiled else None
        extra = shlex.split(ctx.args.bridge_args)
        if fleet:
            extra += ["--stream-shards", str(ctx.args.fanout_shards)]
        return BridgeTarget(
            workdir, mqtt_url=broker.url, hstream_url=store.url, payload=payload,
            extra_args=extra, cprofile=cprofile, buffer=buffer,
            rules=fleet_rules_toml(payload) if fleet else None,
        )  # fmt: skip

    return make


def reference_factory(ctx: Context) -> Callable[[Path, Mosquitto, StoreProcess], Target]:
    def make(workdir: Path, broker: Mosquitto, store: StoreProcess) -> Target:
        return ReferenceTarget(
            workdir, mqtt_port=broker.port, hstream_address=store.address,
            workers=ctx.args.shards, size_trigger=ctx.args.size_trigger,
            time_trigger=ctx.args.time_trigger,
        )  # fmt: skip

    return make


def split_cell(spec: str, default_client: str) -> tuple[str, str]:
    """`bridge@gmqtt` -> ("bridge", "gmqtt"); `bridge` -> ("bridge", the --publishers-client)."""
    name, _, client = spec.partition("@")
    return name, client or default_client


async def run_cell(ctx: Context, spec: str) -> CellResult:
    args = ctx.args
    cell, client = split_cell(spec, args.publisher_client)
    fallback = ""
    if cell == "fanout" and client == "c":
        client, fallback = "gmqtt", "gmqtt publishers (mosquitto_pub -l has one topic)"
    # Other publishers than the run's: said in the cell's name.
    tag = f" ({client} publishers)" if client != args.publisher_client and not fallback else ""
    profile = args.profile is not None and cell in PROFILED_CELLS
    result = await run_named_cell(ctx, spec, cell, client, profile, tag)
    result.client = client
    if fallback:
        result.notes.append(fallback)
    return result


async def run_named_cell(
    ctx: Context, spec: str, cell: str, client: str, profile: bool, tag: str
) -> CellResult:
    args = ctx.args
    if cell == "ceiling":
        return await ceiling_cell(ctx, spec, f"ceiling: gmqtt count-only subscriber{tag}", client)
    if cell == "ceiling-c":
        title = f"ceiling: mosquitto_sub -q 1 -C N count-only (C){tag}"
        return await ceiling_c_cell(ctx, spec, title, client)
    if cell in ("bridge", "bridge-json"):
        payload = "raw" if cell == "bridge" else "json"
        result = await store_cell(
            ctx, spec, f"bridge, payload {payload}{tag}",
            bridge_factory(ctx, payload, spec, profile), messages=args.messages, client=client,
            profile=profile,
        )  # fmt: skip
        if spec == "bridge" and not result.error:
            ctx.bridge_peak = result.rate
        return result
    if cell == "fanout":
        title = (
            f"fan-out: bridge, payload raw, 10,000 topics -> {FLEET_SITES} streams x "
            f"{args.fanout_shards} shards{tag}"
        )
        return await store_cell(
            ctx, spec, title, bridge_factory(ctx, "raw", spec, profile, fleet=True),
            messages=args.messages, client=client, profile=profile,
            shape=Shape(args.payload, "fleet"),
        )  # fmt: skip
    if cell == "bridge-disk":
        result = await store_cell(
            ctx, spec, f"bridge, payload raw, --buffer disk{tag}",
            bridge_factory(ctx, "raw", spec, profile, buffer="disk"),
            messages=args.messages, client=client, profile=profile,
        )  # fmt: skip
        if spec == "bridge-disk" and not result.error:
            ctx.bridge_disk_peak = result.rate
        return result
    if cell == "reference":
        result = await store_cell(
            ctx, spec, f"reference: paho + hstreamdb BufferedProducer{tag}",
            reference_factory(ctx), messages=args.messages, client=client,
        )  # fmt: skip
        result.notes.append("acks before stored: at-most-once")
        return result
    if cell in ("latency", "latency-disk"):
        disk = cell == "latency-disk"
        peak = (ctx.bridge_disk_peak or ctx.bridge_peak) if disk else ctx.bridge_peak
        rate = args.latency_rate or peak * 0.5
        if rate <= 0:
            raise RuntimeError(f"{cell} cell needs the bridge cell first, or --latency-rate")
        messages = max(1, int(rate * args.latency_seconds))
        mode = ", --buffer disk" if disk else ""
        result = await store_cell(
            ctx, spec, f"bridge, payload raw{mode}, paced at {rate:,.0f} msg/s{tag}",
            bridge_factory(ctx, "raw", spec, False, buffer="disk" if disk else "memory"),
            messages=messages, client=client, rate=rate,
        )  # fmt: skip
        result.rate_target = rate
        budget = linger(args) + 0.050
        verdict = "met" if result.p99 < budget else "MISSED"
        result.notes.append(f"target p99 < linger + 50 ms = {budget * 1000:.0f} ms: {verdict}")
        return result
    raise ValueError(f"unknown cell {cell!r}")


def linger(args: argparse.Namespace) -> float:
    """The bridge's linger: from --bridge-args if given there, else its default (5 ms)."""
    words = shlex.split(args.bridge_args)
    for i, word in enumerate(words):
        if word.startswith("--linger="):
            return float(word.split("=", 1)[1])
        if word == "--linger" and i + 1 < len(words):
            return float(words[i + 1])
    return 0.005


# --- report --------------------------------------------------------------------------------


def table(results: list[CellResult]) -> str:
    lines = [
        "| cell | msg/s | p50 ms | p99 ms | CPU s | CPU s / 1k msgs | peak RSS MB | stored "
        "| notes |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in results:
        if r.error:
            lines.append(f"| {r.name} | FAILED | | | | | | | {r.error.splitlines()[0][:200]} |")
            continue
        p50, p99 = (f"{r.p50 * 1000:,.1f}", f"{r.p99 * 1000:,.1f}") if r.has_latency else ("-", "-")
        lines.append(
            f"| {r.name} | {r.rate:,.0f} | {p50} | {p99} | "
            f"{r.cpu:.2f} | {r.cpu_per_1k:.3f} | {r.rss:.0f} | {r.stored:,}/{r.messages:,} | "
            f"{'; '.join(r.notes)} |"
        )
    return "\n".join(lines)


def usage_table(results: list[CellResult]) -> str:
    lines = [
        "| cell | X CPU s | broker CPU s | store CPU s | publishers CPU s |",
        "|---|---:|---:|---:|---:|",
    ]
    for r in results:
        if r.error or not r.usage:
            continue
        pub = sum(u.cpu_seconds for name, u in r.usage.items() if name.startswith("publisher"))
        c_pub = sum(u.cpu_seconds for name, u in r.usage.items() if name.endswith("mosquitto_pub"))
        shown = f"{pub:.2f}"
        if any(name.endswith("mosquitto_pub") for name in r.usage):
            shown += f" (mosquitto_pub {c_pub:.2f}, feeders {pub - c_pub:.2f})"
        broker = r.usage.get("broker", Usage()).cpu_seconds
        store = r.usage["store"].cpu_seconds if "store" in r.usage else None
        lines.append(
            f"| {r.name} | {r.cpu:.2f} | {broker:.2f} | "
            f"{'-' if store is None else f'{store:.2f}'} | {shown} |"
        )
    return "\n".join(lines)


def find(results: list[CellResult], cell: str, client: str | None = None) -> CellResult | None:
    """The first successful cell named `cell` (without its @client), of `client`'s publishers."""
    for r in results:
        if not r.error and r.cell.partition("@")[0] == cell and client in (None, r.client):
            return r
    return None


def verdict(ok: bool) -> str:
    return "met" if ok else "MISSED"


def ratios(results: list[CellResult], client: str) -> str:
    """Ratios between cells of this run with the same publishers (`client`: the run's)."""
    raw, json = find(results, "bridge", client), find(results, "bridge-json", client)
    out = []
    for name, label in (("ceiling", "gmqtt subscriber"), ("ceiling-c", "C subscriber")):
        ceiling = find(results, name, client)
        if ceiling is None or not ceiling.rate:
            continue
        parts = [
            f"{kind} **{r.rate / ceiling.rate:.2f}** ({r.rate:,.0f} / {ceiling.rate:,.0f})"
            for kind, r in (("raw", raw), ("json", json))
            if r is not None
        ]
        if parts:
            out.append(f"- bridge / ceiling ({label}) msg/s: " + ", ".join(parts))
    gmqtt_ceiling, c_ceiling = find(results, "ceiling", client), find(results, "ceiling-c", client)
    if gmqtt_ceiling is not None and c_ceiling is not None and c_ceiling.rate:
        out.append(
            f"- gmqtt ceiling / C ceiling msg/s: {gmqtt_ceiling.rate / c_ceiling.rate:.2f}; "
            f"CPU per 1k msgs, gmqtt / C subscriber: "
            f"{gmqtt_ceiling.cpu_per_1k / max(c_ceiling.cpu_per_1k, 1e-9):.1f}x"
        )
    reference = find(results, "reference", client)
    if raw is not None and reference is not None and reference.rate:
        out.append(f"- bridge / reference msg/s: {raw.rate / reference.rate:.2f}")
        if raw.cpu_per_1k:
            out.append(
                f"- reference / bridge CPU per 1k msgs: {reference.cpu_per_1k / raw.cpu_per_1k:.2f}"
            )
    if raw is not None and json is not None and raw.rate and raw.cpu_per_1k:
        share, cost = json.rate / raw.rate, json.cpu_per_1k / raw.cpu_per_1k
        out.append(
            f"- json / raw msg/s: **{share:.2f}** ({json.rate:,.0f} / {raw.rate:,.0f}; target >= "
            f"{JSON_RATE_TARGET}: {verdict(share >= JSON_RATE_TARGET)})"
        )
        out.append(
            f"- json / raw CPU per message: **{cost:.2f}** ({json.cpu_per_1k * 1000:.1f} / "
            f"{raw.cpu_per_1k * 1000:.1f} us; target <= {JSON_CPU_TARGET}: "
            f"{verdict(cost <= JSON_CPU_TARGET)})"
        )
    out += fanout_ratios(results)
    out += disk_ratios(results)
    return "\n".join(out)


def fanout_ratios(results: list[CellResult]) -> list[str]:
    """The fan-out against the single-stream raw cell of the same publishers, and its memory."""
    fan = find(results, "fanout")
    if fan is None:
        return []
    out = []
    base = find(results, "bridge", fan.client)
    if base is not None and base.rate:
        share = fan.rate / base.rate
        out.append(
            f"- fanout / bridge raw (one stream, {fan.client} publishers) msg/s: **{share:.2f}** "
            f"({fan.rate:,.0f} / {base.rate:,.0f}; target >= {FANOUT_TARGET}: "
            f"{verdict(share >= FANOUT_TARGET)}); CPU per message "
            f"{fan.cpu_per_1k / max(base.cpu_per_1k, 1e-9):.2f}x"
        )
    else:
        out.append(
            f"- fanout: no bridge raw cell of {fan.client} publishers in this run to compare"
        )
    if fan.budget:
        mib = 2**20
        over = fan.rss - fan.budget / mib
        line = (
            f"- fanout memory: peak RSS {fan.rss:.0f} MiB against --buffer-bytes "
            f"{fan.budget / mib:.0f} MiB ({over:+.0f} MiB over the budget); "
            f"the most it buffered was {fan.peak_queued / mib:.1f} MiB (queuing_bytes_peak), so "
            f"the constant beyond what the budget counts is "
            f"~{fan.rss - fan.peak_queued / mib:.0f} MiB"
        )
        if base is not None:
            line += f" (bridge raw, one stream: peak RSS {base.rss:.0f} MiB)"
        out.append(line)
    return out


def disk_ratios(results: list[CellResult]) -> list[str]:
    """--buffer disk against memory mode, cells of this run only."""
    cells = {r.cell: r for r in results if not r.error}
    memory, disk = cells.get("bridge"), cells.get("bridge-disk")
    out = []
    if memory is not None and disk is not None and memory.rate:
        share = disk.rate / memory.rate
        verdict = "met" if share >= DISK_TARGET else "MISSED"
        out.append(
            f"- bridge-disk / bridge msg/s: {share:.2f} ({disk.rate:,.0f} / {memory.rate:,.0f}; "
            f"target >= {DISK_TARGET}: {verdict})"
        )
        if memory.cpu_per_1k:
            out.append(
                f"- bridge-disk / bridge CPU per 1k msgs: {disk.cpu_per_1k / memory.cpu_per_1k:.2f}"
                f" ({disk.cpu_per_1k:.3f} / {memory.cpu_per_1k:.3f} s)"
            )
    out += [
        f"- disk buffer in {r.cell}: {r.fsyncs:,} fsyncs for {r.written:,} records, "
        f"{r.fsync_rate:,.0f} fsyncs/s, {r.per_fsync:.1f} records per fsync"
        for r in results
        if r.disk and not r.error
    ]
    paced = [cells[c] for c in ("latency", "latency-disk") if c in cells]
    if paced:
        out.append(
            "- p99 publish-to-stored at half peak: "
            + "; ".join(
                f"{'disk' if r.disk else 'memory'} {r.p99 * 1000:,.1f} ms "
                f"(p50 {r.p50 * 1000:,.1f} ms) at {r.rate_target:,.0f} msg/s"
                for r in paced
            )
        )
    return out


def timelines(results: list[CellResult]) -> str:
    """Messages published and stored per TIMELINE_STEP from the first publish, per cell."""
    parts = []
    for r in results:
        if not r.timeline:
            continue
        parts += [
            f"Timeline, {r.name} (per {TIMELINE_STEP * 1000:.0f} ms; buffered = the bridge's "
            "queuing_records gauge at the step's last poll, * = intake paused):",
            "",
            "| from s | published | stored | buffered |",
            "|---:|---:|---:|---:|",
        ]
        for step, (at, pub, st) in enumerate(r.timeline):
            queued, paused = r.buffered.get(step, (None, False))
            shown = "" if queued is None else f"{queued:,}{' *' if paused else ''}"
            parts.append(f"| {at:.1f} | {pub:,} | {st:,} | {shown} |")
        parts.append("")
    return "\n".join(parts)


def machine() -> str:
    try:
        version = subprocess.run(
            [find_mosquitto(), "-h"], capture_output=True, text=True, timeout=5
        ).stdout.splitlines()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        version = "mosquitto: unknown"
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    return (
        f"- nproc {os.cpu_count()} ({model}), Python {platform.python_version()}, {version}\n"
        f"- load average at the end of the run: {load}"
    )


PAYLOAD_TEXT = {
    "padded": "200-byte JSON",
    "telemetry": "~170-byte telemetry JSON (varying device, values and seq)",
}


def publishers_text(args: argparse.Namespace) -> str:
    if args.publisher_client == "c":
        return (
            f"{args.publishers} `mosquitto_pub -l -q 1 -M {args.window}` publishers, each fed "
            "lines by its own Python process, one topic each"
        )
    return f"{args.publishers} {args.publisher_client} publisher processes, one connection each"


def json_encoder() -> str:
    """What a json rule's records are encoded with, read from the tree as it is at the start of
    the run (another change may be in progress): the call in bridge/router.py, and whether a
    fresh interpreter loads structenc's compiled module (`structenc.COMPILED`)."""
    router = (REPO_ROOT / "bridge" / "router.py").read_text()
    if "json_struct_bytes(" in router:
        used = "bridge/router.py calls records.json_struct_bytes (orjson + structenc)"
    elif "struct_bytes(json_object(" in router:
        used = (
            "bridge/router.py calls struct_bytes(json_object(...)) (stdlib json.loads, protobuf "
            "Struct.update + SerializeToString)"
        )
    else:
        used = "bridge/router.py: json encoder not recognised"
    probe = subprocess.run(
        [sys.executable, "-c", "import bridge.hstream.structenc as s; print(s.COMPILED)"],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    if probe.returncode == 0:
        compiled = probe.stdout.strip() == "True"
        used += f"; structenc.COMPILED = {compiled}" + (
            " (the C extension)" if compiled else " (the pure-Python fallback)"
        )
    else:
        used += "; no importable bridge.hstream.structenc"
    head = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "status", "--porcelain", "bridge"], cwd=REPO_ROOT, capture_output=True, text=True
    ).stdout.splitlines()
    changed = [line[3:] for line in status if line.strip()]
    where = f"HEAD {head}" + (f"; uncommitted in the tree: {', '.join(changed)}" if changed else "")
    return f"{used} ({where})"


def ratio_values(results: list[CellResult], client: str) -> dict[str, tuple[float, str]]:
    """The run's headline ratios, by label: (value, target text) for the rounds summary."""
    values: dict[str, tuple[float, str]] = {}
    raw, json = find(results, "bridge", client), find(results, "bridge-json", client)
    c_ceiling = find(results, "ceiling-c", client)
    if raw is not None and c_ceiling is not None and c_ceiling.rate:
        values["bridge raw / C ceiling, msg/s"] = (raw.rate / c_ceiling.rate, ">= 0.9")
    if raw is not None and json is not None and raw.rate and raw.cpu_per_1k:
        values["json / raw, msg/s"] = (json.rate / raw.rate, f">= {JSON_RATE_TARGET}")
        values["json / raw, CPU per message"] = (
            json.cpu_per_1k / raw.cpu_per_1k,
            f"<= {JSON_CPU_TARGET}",
        )
    fan = find(results, "fanout")
    base = None if fan is None else find(results, "bridge", fan.client)
    if fan is not None and base is not None and base.rate and base.cpu_per_1k:
        values["fanout / bridge raw, msg/s"] = (fan.rate / base.rate, f">= {FANOUT_TARGET}")
        values["fanout / bridge raw, CPU per message"] = (fan.cpu_per_1k / base.cpu_per_1k, "")
    disk, memory = find(results, "bridge-disk"), find(results, "bridge")
    if disk is not None and memory is not None and memory.rate:
        values["bridge-disk / bridge, msg/s"] = (disk.rate / memory.rate, f">= {DISK_TARGET}")
    return values


def rounds_summary(rounds: list[list[CellResult]], client: str) -> str:
    """Each headline ratio in every round, and its median: one run's ratio moves with the
    machine's speed between its cells; the median of rounds run one after the other less so."""
    per_round = [ratio_values(results, client) for results in rounds]
    labels = list(dict.fromkeys(label for values in per_round for label in values))
    out = [
        f"## Ratios over {len(rounds)} rounds (each round runs every cell once, in order)",
        "",
        "| ratio | "
        + " | ".join(f"round {i + 1}" for i in range(len(rounds)))
        + " | median | target |",
        "|---|" + "---:|" * (len(rounds) + 1) + "---|",
    ]
    for label in labels:
        found = [values.get(label) for values in per_round]
        numbers = sorted(v[0] for v in found if v is not None)
        median = (
            numbers[len(numbers) // 2]
            if len(numbers) % 2
            else ((numbers[len(numbers) // 2 - 1] + numbers[len(numbers) // 2]) / 2)
        )
        target = next(v[1] for v in found if v is not None)
        cells = " | ".join("-" if v is None else f"{v[0]:.2f}" for v in found)
        out.append(f"| {label} | {cells} | **{median:.2f}** | {target} |")
    return "\n".join(out)


def render(ctx: Context, results: list[CellResult], started_load: str) -> str:
    args = ctx.args
    command = ".venv/bin/python -m bench.pipeline " + shlex.join(sys.argv[1:])
    parts = [
        "## Pipeline: publishers -> Mosquitto -> X -> store",
        "",
        table(results),
        "",
        ratios(results, args.publisher_client),
        "",
        "Process CPU seconds during each cell (everything shares the cores):",
        "",
        usage_table(results),
        "",
        f"Setup: {publishers_text(args)}; QoS 1, {PAYLOAD_TEXT[args.payload]}, "
        f"{args.window} in flight each; stream `{STREAM}` with "
        f"{args.shards} shard(s); bridge args: `{args.bridge_args or '(defaults)'}`; reference: "
        f"size_trigger {args.size_trigger} B, time_trigger {args.time_trigger} s, "
        f"{args.shards} worker(s).",
        "Saturated cells (all but the paced ones): publishers outrun X, so their latency is mostly "
        "time queued in the broker or in X's buffer, not X's own speed.",
        "",
        f"Reproduce: `{command}`",
        "",
        machine(),
        f"- load average at the start: {started_load}",
        f"- JSON encoder: {ctx.encoder}",
    ]
    if ctx.profiles:
        parts += ["", *ctx.profiles]
    if args.timeline:
        parts += ["", timelines(results)]
    return "\n".join(parts) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="End-to-end benchmark of the bridge against a count-only ceiling and a "
        "reference bridge built on the official client."
    )
    parser.add_argument("--messages", type=int, default=200_000, help="messages per cell")
    parser.add_argument("--publishers", type=int, default=2, help="publisher processes")
    parser.add_argument(
        "--publishers-client",
        "--publisher-client",
        dest="publisher_client",
        choices=CLIENTS,
        default="gmqtt",
        help="gmqtt or paho processes, or c: mosquitto_pub -l -q 1 processes fed lines",
    )
    parser.add_argument(
        "--payload",
        choices=PAYLOADS,
        default="padded",
        help="padded: 200-byte JSON; telemetry: a ~170-byte telemetry reading",
    )
    parser.add_argument(
        "--fanout-shards", type=int, default=4, help="shards of each fan-out stream"
    )
    parser.add_argument("--window", type=int, default=1000, help="in-flight per publisher")
    parser.add_argument(
        "--cells",
        default=",".join(DEFAULT_CELLS),
        help=f"comma-separated cells, of: {', '.join(ALL_CELLS)} "
        f"(default: {', '.join(DEFAULT_CELLS)}); CELL@CLIENT runs it with other publishers",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 20,000 messages")
    parser.add_argument("--shards", type=int, default=1, help="shards of the stream")
    parser.add_argument("--bridge-args", default="", help="extra flags for `bridge run`")
    parser.add_argument("--size-trigger", type=int, default=200_000, help="reference: bytes")
    parser.add_argument("--time-trigger", type=float, default=0.005, help="reference: seconds")
    parser.add_argument(
        "--latency-rate",
        type=float,
        default=0.0,
        help="msg/s of the latency cells (default: half the msg/s of bridge, for latency-disk "
        "of bridge-disk)",
    )
    parser.add_argument("--latency-seconds", type=float, default=5.0)
    parser.add_argument("--cell-timeout", type=float, default=300.0, help="hard limit per cell")
    parser.add_argument(
        "--stall-seconds",
        type=float,
        default=15.0,
        help="give up when publishing is over and nothing was stored for this long",
    )
    parser.add_argument("--profile", choices=["py-spy", "cprofile"], default=None,
                        help="profile the bridge in the bridge, bridge-json, bridge-disk and "
                        "fanout cells")  # fmt: skip
    parser.add_argument("--timeline", action="store_true",
                        help="add published/stored counts per 100 ms for each cell")  # fmt: skip
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run the cells this many times, one round after the other, and report each "
        "round and the median of its ratios",
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "pipeline.md")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if args.quick and "--messages" not in " ".join(argv or sys.argv[1:]):
        args.messages = 20_000
    if args.quick:
        args.latency_seconds = min(args.latency_seconds, 2.0)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(
        c for c in cells
        if split_cell(c, args.publisher_client)[0] not in ALL_CELLS
        or split_cell(c, args.publisher_client)[1] not in CLIENTS
    )  # fmt: skip
    if unknown:
        parser.error(
            f"unknown cells {unknown}; known: {', '.join(ALL_CELLS)}, each optionally "
            f"@{'|@'.join(CLIENTS)}"
        )
    if len(set(cells)) != len(cells):
        parser.error("a cell is named twice")
    args.cell_list = cells
    return args


async def run(args: argparse.Namespace) -> int:
    started_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    rounds: list[tuple[Context, list[CellResult], str]] = []
    encoder = json_encoder()
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        for round_ in range(args.rounds):
            load = started_load if round_ == 0 else ", ".join(f"{x:.2f}" for x in os.getloadavg())
            ctx = Context(args, Path(tmp) / f"round-{round_ + 1}", encoder=encoder)
            results: list[CellResult] = []
            for cell in args.cell_list:
                print(f"-- {cell} ...", file=sys.stderr, flush=True)
                t0 = time.monotonic()
                try:
                    result = await run_cell(ctx, cell)
                except Exception as exc:
                    traceback.print_exc()
                    result = CellResult(cell, args.messages, error=f"{type(exc).__name__}: {exc}")
                result.cell = cell
                took = time.monotonic() - t0
                print(f"   {cell}: {result.rate:,.0f} msg/s, {took:.0f} s"
                      + (f" FAILED {result.error}" if result.error else ""),
                      file=sys.stderr, flush=True)  # fmt: skip
                results.append(result)
            rounds.append((ctx, results, load))
    if len(rounds) == 1:
        ctx, results, load = rounds[0]
        text = render(ctx, results, load)
    else:
        parts = [rounds_summary([results for _, results, _ in rounds], args.publisher_client)]
        for index, (ctx, results, load) in enumerate(rounds):
            body = render(ctx, results, load).replace("\n## ", "\n### ")
            parts += ["", f"## Round {index + 1}", "", body.replace("## Pipeline", "### Pipeline")]
        text = "\n".join(parts)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 1 if any(r.error for _, results, _ in rounds for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
