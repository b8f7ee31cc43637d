"""End-to-end benchmark: publishers -> Mosquitto -> X -> the embedded store, side by side.

    .venv/bin/python -m bench.pipeline                       # default cells, 200,000 messages each
    .venv/bin/python -m bench.pipeline --quick               # smoke run, 20,000 messages
    .venv/bin/python -m bench.pipeline --cells bridge --profile py-spy
    .venv/bin/python -m bench.pipeline --cells bridge,bridge-disk,latency,latency-disk

Every cell gets a fresh Mosquitto (own config, free 127.0.0.1 port, no in-flight or queue
limits) and, where records are stored, a fresh store subprocess
(`python -m bridge.hstream.store`) holding a pre-created stream `bench`. Publisher processes
(gmqtt, one connection each, QoS 1, every PUBACK awaited, 1000 in flight per connection) send
200-byte JSON payloads that carry their publish time and a sequence number, on
`bench/dNNN/data` for 100 devices. Cells:

- ceiling: a gmqtt subscriber (MQTT 5, QoS 1) that only counts: what broker and publishers allow.
- bridge: `python -m bridge run` with one rule `bench/{dev}/data` -> stream `bench`, key `${dev}`,
  payload raw; bridge-json: the same with payload json (a protobuf Struct per record).
- reference: `bench/reference_bridge.py`, paho-mqtt + the official client's BufferedProducer,
  which acks before the store confirms (at-most-once).
- latency: the bridge again, with publishers paced at half the bridge's measured peak.
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

from bench._load import CeilingSubscriber, LoadResult, PublisherPool, parse, publish_warmup
from bench._profile import PySpy, top_self_cprofile, top_self_folded
from bench._targets import BridgeTarget, ReferenceTarget, Target
from bench._watch import Usage, Watch
from bridge.hstream.client import HStreamClient
from tests.support.mosquitto import Mosquitto, find_mosquitto
from tests.support.store import StoreProcess

RESULTS = Path(__file__).resolve().parent / "results"
DEFAULT_CELLS = ("ceiling", "bridge", "bridge-json", "reference", "latency")
ALL_CELLS = (*DEFAULT_CELLS, "bridge-disk", "latency-disk")
PROFILED_CELLS = ("bridge", "bridge-json", "bridge-disk")
DISK_TARGET = 0.8  # bridge-disk msg/s at least this share of bridge's
STREAM = "bench"
TIMELINE_STEP = 0.1  # seconds per row of --timeline
# Mosquitto's test config already lifts the in-flight and queue limits; say so explicitly here
# too, so the broker queues for a slow subscriber instead of dropping.
BROKER_CONFIG = "max_inflight_messages 0\nmax_queued_messages 10000000\nmax_queued_bytes 0\n"


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


def percentile(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# --- environment of one cell ---------------------------------------------------------------


@contextlib.asynccontextmanager
async def broker_and_store(
    ctx: Context, cell: str, with_store: bool
) -> AsyncIterator[tuple[Mosquitto, StoreProcess | None]]:
    """A fresh broker and (optionally) a fresh store with the stream `bench`; both stopped after."""
    directory = ctx.workdir / cell
    directory.mkdir(parents=True, exist_ok=True)
    broker = Mosquitto(directory / "mosquitto", extra_config=BROKER_CONFIG)
    store: StoreProcess | None = None
    try:
        broker.start()
        if with_store:
            store = StoreProcess(directory / "store")
            await store.start()
            async with HStreamClient(store.url) as client:
                await client.create_stream(STREAM, shard_count=ctx.args.shards)
        yield broker, store
    finally:
        if store is not None:
            store.kill()
        broker.close()


async def read_back(store: StoreProcess) -> list[tuple[float, float, int]]:
    """(store publish_time, payload timestamp, seq) of every record in `bench`, warm-up excluded."""
    rows: list[tuple[float, float, int]] = []
    async with HStreamClient(store.url) as client, client.read_stream(STREAM) as reader:
        async for record in reader:
            ts, seq = parse(record.payload)
            if seq >= 0:
                rows.append((record.publish_time, ts, seq))
    return rows


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
        await asyncio.sleep(0.05)


async def finish_publishers(publishing: "asyncio.Task[LoadResult]") -> LoadResult:
    load = await publishing
    if load.errors:
        raise RuntimeError("publisher failed: " + "; ".join(load.errors))
    return load


def start_publishers(
    ctx: Context, broker: Mosquitto, messages: int, rate: float | None
) -> PublisherPool:
    pool = PublisherPool(
        broker.host, broker.port, messages=messages, publishers=ctx.args.publishers, rate=rate,
        window=ctx.args.window, timeout=ctx.args.cell_timeout, client=ctx.args.publisher_client,
    )  # fmt: skip
    pool.connect()
    return pool


# --- cells ---------------------------------------------------------------------------------


async def ceiling_cell(ctx: Context) -> CellResult:
    messages = ctx.args.messages
    result = CellResult("ceiling: gmqtt count-only subscriber", messages)
    async with broker_and_store(ctx, "ceiling", with_store=False) as (broker, _):
        subscriber = CeilingSubscriber(broker.host, broker.port, messages, ctx.args.cell_timeout)
        try:
            await asyncio.to_thread(subscriber.start)
            await asyncio.to_thread(publish_warmup, broker.host, broker.port)
            if not await asyncio.to_thread(subscriber.warm.wait, 10.0):
                raise TimeoutError("the warm-up message did not reach the subscriber")
            with start_publishers(ctx, broker, messages, None) as pool:
                pids = {"subscriber": subscriber.pid, "broker": broker_pid(broker)}
                pids |= {f"publisher{i}": pid for i, pid in enumerate(pool.pids)}
                watch = Watch(pids)
                watch.start()
                pool.start()
                report = await asyncio.to_thread(subscriber.wait)
                result.usage = watch.stop()
                load = await finish_publishers(asyncio.create_task(asyncio.to_thread(pool.wait)))
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
    result.notes.append("latency = publish to receive (nothing stored)")
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
    rate: float | None = None,
    profile: bool = False,
) -> CellResult:
    """One cell with a store: start X, warm up, publish, wait until all are stored, read back."""
    result = CellResult(title, messages)
    async with broker_and_store(ctx, cell, with_store=True) as (broker, store):
        assert store is not None
        target = make_target(ctx.workdir / cell, broker, store)
        spy: PySpy | None = None
        try:
            await target.start()
            await asyncio.to_thread(publish_warmup, broker.host, broker.port)
            await target.wait_stored(1, 30.0, "the warm-up message")
            with start_publishers(ctx, broker, messages, rate) as pool:
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
                    await wait_progress(target, messages + 1, publishing, ctx)
                finally:
                    result.usage = watch.stop()
                    if spy is not None:
                        spy.stop()
                load = await finish_publishers(publishing)
            if isinstance(target, BridgeTarget):
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
        rows = await read_back(store)
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
    ctx: Context, payload: str, cell: str, profile: bool, buffer: str = "memory"
) -> Callable[[Path, Mosquitto, StoreProcess], Target]:
    def make(workdir: Path, broker: Mosquitto, store: StoreProcess) -> Target:
        cprofiled = profile and ctx.args.profile == "cprofile"
        cprofile = RESULTS / f"{cell}.pstats" if cprofiled else None
        return BridgeTarget(
            workdir, mqtt_url=broker.url, hstream_url=store.url, payload=payload,
            extra_args=shlex.split(ctx.args.bridge_args), cprofile=cprofile, buffer=buffer,
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


async def run_cell(ctx: Context, cell: str) -> CellResult:
    args = ctx.args
    profile = args.profile is not None and cell in PROFILED_CELLS
    if cell == "ceiling":
        return await ceiling_cell(ctx)
    if cell in ("bridge", "bridge-json"):
        payload = "raw" if cell == "bridge" else "json"
        result = await store_cell(
            ctx, cell, f"bridge, payload {payload}", bridge_factory(ctx, payload, cell, profile),
            messages=args.messages, profile=profile,
        )  # fmt: skip
        if cell == "bridge" and not result.error:
            ctx.bridge_peak = result.rate
        return result
    if cell == "bridge-disk":
        result = await store_cell(
            ctx, cell, "bridge, payload raw, --buffer disk",
            bridge_factory(ctx, "raw", cell, profile, buffer="disk"),
            messages=args.messages, profile=profile,
        )  # fmt: skip
        if not result.error:
            ctx.bridge_disk_peak = result.rate
        return result
    if cell == "reference":
        result = await store_cell(
            ctx, cell, "reference: paho + hstreamdb BufferedProducer", reference_factory(ctx),
            messages=args.messages,
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
            ctx, cell, f"bridge, payload raw{mode}, paced at {rate:,.0f} msg/s",
            bridge_factory(ctx, "raw", cell, False, buffer="disk" if disk else "memory"),
            messages=messages, rate=rate,
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
        lines.append(
            f"| {r.name} | {r.rate:,.0f} | {r.p50 * 1000:,.1f} | {r.p99 * 1000:,.1f} | "
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
        broker = r.usage.get("broker", Usage()).cpu_seconds
        store = r.usage["store"].cpu_seconds if "store" in r.usage else None
        lines.append(
            f"| {r.name} | {r.cpu:.2f} | {broker:.2f} | "
            f"{'-' if store is None else f'{store:.2f}'} | {pub:.2f} |"
        )
    return "\n".join(lines)


def ratios(results: list[CellResult]) -> str:
    by = {r.name.split(":")[0].split(",")[0]: r for r in results if not r.error}
    named = {r.name: r for r in results if not r.error}
    bridge = next((r for n, r in named.items() if n == "bridge, payload raw"), None)
    out = []
    if bridge is not None:
        ceiling, reference = by.get("ceiling"), by.get("reference")
        if ceiling is not None and ceiling.rate:
            out.append(f"- bridge / ceiling msg/s: {bridge.rate / ceiling.rate:.2f}")
        if reference is not None and reference.rate:
            out.append(f"- bridge / reference msg/s: {bridge.rate / reference.rate:.2f}")
            if bridge.cpu_per_1k:
                out.append(
                    "- reference / bridge CPU per 1k msgs: "
                    f"{reference.cpu_per_1k / bridge.cpu_per_1k:.2f}"
                )
    out += disk_ratios(results)
    return "\n".join(out)


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


def render(ctx: Context, results: list[CellResult], started_load: str) -> str:
    args = ctx.args
    command = ".venv/bin/python -m bench.pipeline " + shlex.join(sys.argv[1:])
    parts = [
        "## Pipeline: publishers -> Mosquitto -> X -> store",
        "",
        table(results),
        "",
        ratios(results),
        "",
        "Process CPU seconds during each cell (everything shares the cores):",
        "",
        usage_table(results),
        "",
        f"Setup: {args.publishers} gmqtt publisher processes ({args.publisher_client}), "
        f"QoS 1, 200-byte JSON, {args.window} in flight each; stream `{STREAM}` with "
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
    parser.add_argument("--publisher-client", choices=["gmqtt", "paho"], default="gmqtt")
    parser.add_argument("--window", type=int, default=1000, help="in-flight per publisher")
    parser.add_argument(
        "--cells",
        default=",".join(DEFAULT_CELLS),
        help=f"comma-separated cells, of: {', '.join(ALL_CELLS)} "
        f"(default: {', '.join(DEFAULT_CELLS)})",
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
                        help="profile the bridge in the bridge, bridge-json and bridge-disk "
                        "cells")  # fmt: skip
    parser.add_argument("--timeline", action="store_true",
                        help="add published/stored counts per 100 ms for each cell")  # fmt: skip
    parser.add_argument("--output", type=Path, default=RESULTS / "pipeline.md")
    args = parser.parse_args(argv)
    if args.quick and "--messages" not in " ".join(argv or sys.argv[1:]):
        args.messages = 20_000
    if args.quick:
        args.latency_seconds = min(args.latency_seconds, 2.0)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = sorted(set(cells) - set(ALL_CELLS))
    if unknown:
        parser.error(f"unknown cells {unknown}; known: {', '.join(ALL_CELLS)}")
    args.cell_list = cells
    return args


async def run(args: argparse.Namespace) -> int:
    started_load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: list[CellResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-pipeline-") as tmp:
        ctx = Context(args, Path(tmp))
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
    text = render(ctx, results, started_load)
    print(text)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(text)
    return 1 if any(r.error for r in results) else 0


def main(argv: list[str] | None = None) -> int:
    return asyncio.run(run(parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
