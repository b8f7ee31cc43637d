"""Prometheus metrics of one bridge, in its own registry: no global state, many bridges per process.

Names follow the counters EMQX shows for its data integrations, so an EMQX user reads them the
same way: `matched`, `success`, `failed`, `dropped`, `queuing`, `inflight`, `retried`. For the
records of one rule the EMQX identity holds, up to timing:

    matched = success + failed + dropped + dead_lettered + queuing

Families (all prefixed `hstream_bridge_`; counters get `_total` on the wire):

    messages_received_total{qos}          MQTT PUBLISHes handed to the bridge
    messages_matched_total{rule}          messages a rule matched (each makes one record)
    messages_unmatched_total              messages no enabled rule matched
    records_success_total{rule,stream}    records HStreamDB confirmed stored
    records_failed_total{rule,stream,reason}  records given up on (not stored, not dead-lettered);
                                          no path gives up today (the promise), so it stays 0
    records_dropped_total{reason}         QoS 0 records dropped on purpose (qos0_overflow, shutdown)
    records_dead_lettered_total{rule,reason}  records parked in the dead-letter stream
    appends_retried_total{stream}         appends sent again after a retriable error
    queuing_records, queuing_bytes        buffered or in flight now (the byte budget covers these)
    queuing_bytes_peak                    the most queuing_bytes ever was (budget + one read)
    buffer_budget_bytes                   the configured byte budget
    intake_paused                         1 while the budget is spent and the socket is not read
    inflight_appends                      appends waiting for HStreamDB's answer
    batch_records, batch_bytes            records and encoded bytes per append (histograms)
    append_duration_seconds               one Append RPC, sent to answered (histogram)
    end_to_end_latency_seconds            MQTT message received to record stored (histogram)
    mqtt_connected, mqtt_reconnects_total
    hstream_reachable, hstream_errors_total{code}
    rules_loaded, build_info{version}
    config_version                        the configuration version (config stream) applied
    gc_seconds_total{generation}          time in Python's cyclic garbage collector (the process)

With `--buffer disk` only (`bind_disk_buffer`; absent, not 0, in memory mode):

    disk_buffer_bytes                     bytes of buffer segment files on disk
    disk_buffer_limit_bytes               the configured limit (--buffer-disk-bytes)
    disk_buffer_backlog_records, disk_buffer_backlog_bytes
                                          durable records not yet forwarded (stored in HStreamDB
                                          or dead-lettered), and their bytes
    disk_buffer_oldest_age_seconds        age of the oldest unforwarded record; 0 when empty
    disk_buffer_accepting                 1 while the buffer takes records; 0 while full (the
                                          limit reached, or the disk full: ENOSPC)
    disk_buffer_written_records_total     records made durable
    disk_buffer_forwarded_records_total   records forwarded
    disk_buffer_fsyncs_total              fsync calls of the buffer

`totals()` reads the per-rule counters and the buffer gauges back for the console's
`GET /stats`, through the families' public `collect()`.

Labels are bounded on purpose: a rule id, a stream name, a reason or an error code from a fixed
set in the code, never an MQTT topic, a client id or an exception text. One caveat: `stream` is as
bounded as the rules make it; a stream template over a per-device capture gives one series per
device. So the series of a stream the bridge forgets (idle for `--stream-idle-timeout`) go with
it (`forget_stream`): its counters start again from 0 if it comes back, which `rate()` and
`increase()` read as a counter reset.

Hot paths (the bridge aims at 25,000 msg/s): increment once per batch with `inc(n)`, not once
per record; the `observe_*` helpers below do that. `family.labels(...)` costs about 1.0-1.4 us
(it validates and looks up the labels under a lock), a cached child's `inc()` about 0.25 us, so
the helpers keep labelled children in a dict (`child()`); a histogram `observe()` is about 0.5 us.
Gauges that mirror pipeline state (`queuing_*`, `inflight_appends`) are read at scrape time via
`bind_gauges`, and the disk buffer's families via `bind_disk_buffer`, costing nothing per message.
"""

import bisect
import gc
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Protocol, TypeVar

import grpc
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from bridge import __version__
from bridge.hstream.errors import HStreamError

PREFIX = "hstream_bridge"

# 1 ms to 30 s: a local append takes milliseconds, a message held through a retry takes seconds,
# and 30 s is the default append time-out.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
# Up to the default batch_max_records (1000) and beyond, for larger settings.
BATCH_RECORD_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Up to HStreamDB's default 1 MiB limit per append.
BATCH_BYTE_BUCKETS = (256, 1024, 4096, 16384, 65536, 262144, 524288, 1048576)

# Reasons known in advance; their series exist from the start so rate() works before the first.
DROP_REASONS = ("qos0_overflow", "shutdown")

M = TypeVar("M", bound=MetricWrapperBase)


class _RuleLike(Protocol):
    @property
    def id(self) -> str: ...


class _RouteLike(Protocol):
    """What `observe_received` reads of a `rules.Route`."""

    @property
    def rule(self) -> _RuleLike: ...


class _ItemLike(Protocol):
    """What the batch helpers read of an accumulator `Item`."""

    @property
    def rule_id(self) -> str: ...

    @property
    def received_at(self) -> float: ...

    @property
    def size(self) -> int: ...


class _Buffered(Protocol):
    @property
    def buffered_records(self) -> int: ...

    @property
    def buffered_bytes(self) -> int: ...

    @property
    def peak_bytes(self) -> int: ...


class _InFlight(Protocol):
    @property
    def inflight(self) -> int: ...


class DiskBufferStats(Protocol):
    """What `bind_disk_buffer` reads of the disk buffer (`--buffer disk`), at every scrape.

    Read-only properties, so plain attributes and properties both fit.
    """

    @property
    def bytes_on_disk(self) -> int:
        """Bytes of buffer segment files on disk."""
        ...

    @property
    def backlog_records(self) -> int:
        """Durable records not yet forwarded (stored in HStreamDB or dead-lettered)."""
        ...

    @property
    def backlog_bytes(self) -> int:
        """The bytes of the backlog records."""
        ...

    @property
    def forwarded_total(self) -> int:
        """Records forwarded since start."""
        ...

    @property
    def fsyncs_total(self) -> int:
        """fsync calls of the buffer since start."""
        ...

    @property
    def written_total(self) -> int:
        """Records written (made durable) since start."""
        ...

    @property
    def limit_bytes(self) -> int:
        """The configured limit (--buffer-disk-bytes)."""
        ...

    @property
    def accepting(self) -> bool:
        """False while full: the limit reached, or the disk full (ENOSPC)."""
        ...

    def oldest_age(self) -> float | None:
        """Seconds since the oldest unforwarded record was written; None when empty."""
        ...


@dataclass(frozen=True, slots=True)
class RuleTotals:
    """One rule's counts since start: messages matched, records stored, records dead-lettered."""

    matched: int = 0
    stored: int = 0
    dead_lettered: int = 0


@dataclass(frozen=True, slots=True)
class Totals:
    """The counters and gauges an operator's console shows, as read at one moment."""

    rules: Mapping[str, RuleTotals]
    received: int
    unmatched: int
    dropped: int
    queuing_records: int
    queuing_bytes: int
    budget_bytes: int
    intake_paused: bool


def error_code(error: BaseException) -> str:
    """The `code` label for an HStreamDB failure: its numeric error code, else a gRPC status name.

    Bounded: HStreamDB codes are three-digit numbers; anything else becomes "other".
    """
    if isinstance(error, HStreamError):
        if error.code is not None:
            return str(error.code) if 0 <= error.code < 1000 else "other"
        return error.status.name
    if isinstance(error, grpc.RpcError):
        code = getattr(error, "code", None)
        status = code() if callable(code) else None
        if isinstance(status, grpc.StatusCode):
            return status.name
        return "UNKNOWN"
    if isinstance(error, TimeoutError):
        return "DEADLINE_EXCEEDED"
    return "UNKNOWN"


def _counts_by_rule(items: Iterable[_ItemLike]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.rule_id] = counts.get(item.rule_id, 0) + 1
    return counts


class BridgeMetrics:
    """All metric families of one bridge, registered in `self.registry`."""

    def __init__(self, *, version: str | None = None, process: bool = True) -> None:
        self.registry = CollectorRegistry()
        self._children: dict[tuple[int, tuple[str, ...]], MetricWrapperBase] = {}
        # The children `child()` made per stream label value, for `forget_stream`.
        self._stream_children: dict[str, list[tuple[int, tuple[str, ...]]]] = {}
        # Per-message counts are plain ints (no lock, no label lookup) until a scrape: the
        # first collector of the registry moves them into the counters before the others run.
        self._received = [0, 0, 0]
        self._matched: dict[str, int] = {}
        self._unmatched = 0
        r = self.registry
        r.register(_Flush(self))

        # Intake and routing.
        self.messages_received = Counter(
            f"{PREFIX}_messages_received",
            "MQTT messages delivered to the bridge by the broker, by QoS.",
            ["qos"],
            registry=r,
        )
        self.messages_matched = Counter(
            f"{PREFIX}_messages_matched",
            "Messages a rule matched (EMQX: matched); each match makes one record.",
            ["rule"],
            registry=r,
        )
        self.messages_unmatched = Counter(
            f"{PREFIX}_messages_unmatched",
            "Messages no enabled rule matched; acknowledged and not stored.",
            registry=r,
        )
        # Outcomes per record.
        self.records_success = Counter(
            f"{PREFIX}_records_success",
            "Records HStreamDB confirmed stored (EMQX: success).",
            ["rule", "stream"],
            registry=r,
        )
        self.records_failed = Counter(
            f"{PREFIX}_records_failed",
            "Records the bridge gave up on without storing or dead-lettering them (EMQX: failed).",
            ["rule", "stream", "reason"],
            registry=r,
        )
        self.records_dropped = Counter(
            f"{PREFIX}_records_dropped",
            "QoS 0 records dropped without an attempt to store them, by reason (EMQX: dropped).",
            ["reason"],
            registry=r,
        )
        self.records_dead_lettered = Counter(
            f"{PREFIX}_records_dead_lettered",
            "Records written to the dead-letter stream instead of their target, by reason.",
            ["rule", "reason"],
            registry=r,
        )
        self.appends_retried = Counter(
            f"{PREFIX}_appends_retried",
            "Appends sent again after a retriable HStreamDB error (EMQX: retried).",
            ["stream"],
            registry=r,
        )
        # Buffer and flow control.
        self.queuing_records = Gauge(
            f"{PREFIX}_queuing_records",
            "Records buffered or in flight, not yet stored (EMQX: queuing + inflight).",
            registry=r,
        )
        self.queuing_bytes = Gauge(
            f"{PREFIX}_queuing_bytes",
            "Memory held by buffered or in-flight records (records, held messages, overheads);"
            " what the byte budget counts.",
            registry=r,
        )
        self.queuing_bytes_peak = Gauge(
            f"{PREFIX}_queuing_bytes_peak",
            "The most queuing_bytes has been since start: the budget plus at most one socket read.",
            registry=r,
        )
        self.budget_bytes = Gauge(
            f"{PREFIX}_buffer_budget_bytes",
            "Configured byte budget over everything buffered or in flight (--buffer-bytes).",
            registry=r,
        )
        self.intake_paused = Gauge(
            f"{PREFIX}_intake_paused",
            "1 while the byte budget is spent and the MQTT socket is not read, else 0.",
            registry=r,
        )
        self.inflight_appends = Gauge(
            f"{PREFIX}_inflight_appends",
            "Append requests sent to HStreamDB and not yet answered (EMQX: inflight).",
            registry=r,
        )
        # Batches and latency.
        self.batch_records = Histogram(
            f"{PREFIX}_batch_records",
            "Records per append.",
            buckets=BATCH_RECORD_BUCKETS,
            registry=r,
        )
        self.batch_bytes = Histogram(
            f"{PREFIX}_batch_bytes",
            "Encoded record bytes per append, before compression.",
            buckets=BATCH_BYTE_BUCKETS,
            registry=r,
        )
        self.append_seconds = Histogram(
            f"{PREFIX}_append_duration_seconds",
            "Seconds from sending one Append to its answer.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e_seconds = Histogram(
            f"{PREFIX}_end_to_end_latency_seconds",
            "Seconds from receiving an MQTT message to its record being stored.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        # Connections.
        self.mqtt_connected = Gauge(
            f"{PREFIX}_mqtt_connected",
            "1 while the MQTT session is connected, else 0.",
            registry=r,
        )
        self.mqtt_reconnects = Counter(
            f"{PREFIX}_mqtt_reconnects",
            "Times the MQTT connection was established again after it was lost.",
            registry=r,
        )
        self.hstream_reachable = Gauge(
            f"{PREFIX}_hstream_reachable",
            "1 when HStreamDB answered the last check, else 0.",
            registry=r,
        )
        self.hstream_errors = Counter(
            f"{PREFIX}_hstream_errors",
            "HStreamDB errors by code: the HStreamDB error number or the gRPC status name.",
            ["code"],
            registry=r,
        )
        # Configuration.
        self.rules_loaded = Gauge(
            f"{PREFIX}_rules_loaded",
            "Rules currently loaded (enabled or not).",
            registry=r,
        )
        self.config_version = Gauge(
            f"{PREFIX}_config_version",
            "Version of the configuration (rules and sources) this replica applied.",
            registry=r,
        )
        self.build_info = Info(f"{PREFIX}_build", "Bridge build information.", registry=r)
        self.build_info.info({"version": version or _package_version()})
        # Where the `stream` label sits in the labels of each family that has one.
        self._stream_label: dict[int, tuple[MetricWrapperBase, int]] = {
            id(family): (family, family._labelnames.index("stream"))
            for family in vars(self).values()
            if isinstance(family, MetricWrapperBase) and "stream" in family._labelnames
        }

        if process:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            r.register(_GcTime())

        for reason in DROP_REASONS:
            self.records_dropped.labels(reason=reason)
        self._received_by_qos = tuple(self.messages_received.labels(qos=str(q)) for q in (0, 1, 2))
        # Histogram internals (stable across prometheus-client releases): per-bucket counts, not
        # cumulative, and the sum; a batch's latencies are added with one inc per bucket.
        self._e2e_bounds = list(LATENCY_BUCKETS)
        self._e2e_buckets = self.e2e_seconds._buckets
        self._e2e_sum = self.e2e_seconds._sum
        # Registered by the first `bind_disk_buffer`: memory mode exports no disk buffer family.
        self._disk_buffer: _DiskBufferCollector | None = None

    def flush(self) -> None:
        """Move the per-message counts into their counters (runs at every collection)."""
        for qos, count in enumerate(self._received):
            if count:
                self._received_by_qos[qos].inc(count)
                self._received[qos] = 0
        if self._unmatched:
            self.messages_unmatched.inc(self._unmatched)
            self._unmatched = 0
        if self._matched:
            matched, self._matched = self._matched, {}
            for rule, count in matched.items():
                self.child(self.messages_matched, rule).inc(count)

    # --- children -----------------------------------------------------------------------------

    def child(self, family: M, *values: str) -> M:
        """`family.labels(*values)`, cached: about 4x cheaper on a hot path than `labels()`."""
        key = (id(family), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = family.labels(*values)
            labelled = self._stream_label.get(key[0])
            if labelled is not None:
                self._stream_children.setdefault(values[labelled[1]], []).append(key)
        return found  # type: ignore[return-value]  # the cache keys each family by its id

    def forget_stream(self, stream: str) -> None:
        """Remove every series labelled with `stream` (the bridge forgot the stream: idle).

        Costs the stream's own series, not a scan of all. Only children made by `child()` are
        known here; every helper of this class makes them that way.
        """
        for key in self._stream_children.pop(stream, ()):
            del self._children[key]
            family, _ = self._stream_label[key[0]]
            family.remove(*key[1])

    # --- helpers for the pipeline (each called once per message or once per batch) ------------

    def observe_received(self, qos: int, routes: Sequence[_RouteLike]) -> None:
        """One message from the broker and the rules it matched."""
        self._received[qos if 0 <= qos <= 2 else 0] += 1
        if not routes:
            self._unmatched += 1
            return
        matched = self._matched
        for route in routes:
            rule = route.rule.id
            matched[rule] = matched.get(rule, 0) + 1

    def observe_dropped(self, reason: str, records: int = 1) -> None:
        """QoS 0 records dropped on purpose; pass how many records the message would have made."""
        self.child(self.records_dropped, reason).inc(records)

    def observe_dead_letter(self, rule: str, reason: str, records: int = 1) -> None:
        self.child(self.records_dead_lettered, rule, reason).inc(records)

    def observe_dead_letters(self, items: Iterable[_ItemLike], reason: str) -> None:
        for rule, count in _counts_by_rule(items).items():
            self.observe_dead_letter(rule, reason, count)

    def observe_stored(
        self,
        stream: str,
        items: Sequence[_ItemLike],
        append_seconds: float,
        now: float,
        *,
        success: bool = True,
    ) -> None:
        """One successful append; `now` on the same clock as `Item.received_at` (monotonic).

        `success=False` for appends to the dead-letter stream: those records were counted as
        dead-lettered already, and counting them as success too would break the identity above.
        """
        if not items:
            return
        if success:
            for rule, count in _counts_by_rule(items).items():
                self.child(self.records_success, rule, stream).inc(count)
        self.batch_records.observe(len(items))
        self.batch_bytes.observe(sum(item.size for item in items))
        self.append_seconds.observe(append_seconds)
        counts = [0] * (len(self._e2e_bounds) + 1)
        where = bisect.bisect_left
        bounds = self._e2e_bounds
        total = 0.0
        for item in items:
            latency = now - item.received_at
            if latency < 0.0:
                latency = 0.0
            total += latency
            counts[where(bounds, latency)] += 1
        for index, count in enumerate(counts):
            if count:
                self._e2e_buckets[index].inc(count)
        self._e2e_sum.inc(total)

    def observe_failed(self, stream: str, items: Iterable[_ItemLike], reason: str) -> None:
        for rule, count in _counts_by_rule(items).items():
            self.child(self.records_failed, rule, stream, reason).inc(count)

    def observe_retry(self, stream: str, error: BaseException) -> None:
        """One append that will be sent again; counts the error by code as well."""
        self.child(self.appends_retried, stream).inc()
        self.observe_hstream_error(error)

    def observe_hstream_error(self, error: BaseException) -> None:
        self.child(self.hstream_errors, error_code(error)).inc()

    def bind_gauges(self, buffer: _Buffered, sender: _InFlight) -> None:
        """Read the queuing and in-flight gauges from the pipeline at scrape time."""
        self.queuing_records.set_function(lambda: buffer.buffered_records)
        self.queuing_bytes.set_function(lambda: buffer.buffered_bytes)
        self.queuing_bytes_peak.set_function(lambda: buffer.peak_bytes)
        self.inflight_appends.set_function(lambda: sender.inflight)

    def bind_disk_buffer(self, stats: DiskBufferStats) -> None:
        """Export the `disk_buffer_*` families, read from `stats` at scrape time.

        Until this is called they do not exist (memory mode). Binding again reads the new object
        instead; the families stay registered once.
        """
        if self._disk_buffer is None:
            self._disk_buffer = _DiskBufferCollector(stats)
            self.registry.register(self._disk_buffer)
        else:
            self._disk_buffer.stats = stats

    # --- read back ----------------------------------------------------------------------------

    def totals(self) -> Totals:
        """Per-rule counts (series of forgotten streams no longer count) and the buffer gauges.

        Costs one pass over the series of the three per-rule families; no per-message work.
        """
        self.flush()
        counts: dict[str, list[int]] = {}
        families = (self.messages_matched, self.records_success, self.records_dead_lettered)
        for index, family in enumerate(families):
            for labels, value in _counter_samples(family):
                counts.setdefault(labels["rule"], [0, 0, 0])[index] += int(value)
        return Totals(
            rules={rule: RuleTotals(*values) for rule, values in counts.items()},
            received=sum(int(value) for _, value in _counter_samples(self.messages_received)),
            unmatched=sum(int(value) for _, value in _counter_samples(self.messages_unmatched)),
            dropped=sum(int(value) for _, value in _counter_samples(self.records_dropped)),
            queuing_records=int(_gauge_value(self.queuing_records)),
            queuing_bytes=int(_gauge_value(self.queuing_bytes)),
            budget_bytes=int(_gauge_value(self.budget_bytes)),
            intake_paused=_gauge_value(self.intake_paused) > 0,
        )

    # --- exposition ---------------------------------------------------------------------------

    def render(self) -> tuple[bytes, str]:
        """The body and content type for GET /metrics."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _Flush(Collector):
    """Registered first: flushes the bridge's plain per-message counts, exports nothing."""

    def __init__(self, metrics: "BridgeMetrics") -> None:
        self._metrics = metrics

    def collect(self) -> Iterable[Metric]:
        self._metrics.flush()
        return []

    def describe(self) -> Iterable[Metric]:
        return []


class _GcTime(Collector):
    """`gc_seconds_total{generation}`: how long the cyclic collector ran, timed through
    `gc.callbacks` (one hook per process, whatever the number of registries). Every object kept
    per message in flight is walked by its passes: this shows what that costs."""

    _seconds = [0.0, 0.0, 0.0]
    _started = 0.0
    _hooked = False

    def __init__(self) -> None:
        if not _GcTime._hooked:
            _GcTime._hooked = True
            gc.callbacks.append(_GcTime._on_gc)

    @staticmethod
    def _on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            _GcTime._started = time.perf_counter()
        else:
            _GcTime._seconds[info["generation"]] += time.perf_counter() - _GcTime._started

    def collect(self) -> Iterable[Metric]:
        family = CounterMetricFamily(
            f"{PREFIX}_gc_seconds",
            "Seconds Python's cyclic garbage collector ran in this process, by generation.",
            labels=["generation"],
        )
        for generation, seconds in enumerate(_GcTime._seconds):
            family.add_metric([str(generation)], seconds)
        return [family]

    def describe(self) -> Iterable[Metric]:
        return [CounterMetricFamily(f"{PREFIX}_gc_seconds", "", labels=["generation"])]


# The disk buffer's families: name without the prefix, counter or not, help.
_DISK_BUFFER_FAMILIES = (
    ("disk_buffer_bytes", False, "Bytes of the disk buffer's segment files on disk."),
    (
        "disk_buffer_limit_bytes",
        False,
        "Configured limit of the disk buffer (--buffer-disk-bytes).",
    ),
    (
        "disk_buffer_backlog_records",
        False,
        "Records durable in the disk buffer and not yet forwarded (stored or dead-lettered).",
    ),
    ("disk_buffer_backlog_bytes", False, "Bytes of the records in the disk buffer's backlog."),
    (
        "disk_buffer_oldest_age_seconds",
        False,
        "Seconds since the oldest unforwarded record was written to disk; 0 when none is.",
    ),
    (
        "disk_buffer_accepting",
        False,
        "1 while the disk buffer takes records, 0 while full (its limit reached or ENOSPC).",
    ),
    (
        "disk_buffer_written_records",
        True,
        "Records written to the disk buffer and made durable (fsync'd).",
    ),
    (
        "disk_buffer_forwarded_records",
        True,
        "Records forwarded from the disk buffer: stored in HStreamDB or dead-lettered.",
    ),
    ("disk_buffer_fsyncs", True, "fsync calls made by the disk buffer."),
)


class _DiskBufferCollector(Collector):
    """The `disk_buffer_*` families, read from the bound stats at every collection."""

    def __init__(self, stats: DiskBufferStats) -> None:
        self.stats = stats

    def collect(self) -> Iterable[Metric]:
        stats = self.stats
        age = stats.oldest_age()
        values = (
            stats.bytes_on_disk,
            stats.limit_bytes,
            stats.backlog_records,
            stats.backlog_bytes,
            0.0 if age is None else max(0.0, age),
            1 if stats.accepting else 0,
            stats.written_total,
            stats.forwarded_total,
            stats.fsyncs_total,
        )
        return [
            _family(name, counter, text, value)
            for (name, counter, text), value in zip(_DISK_BUFFER_FAMILIES, values, strict=True)
        ]

    def describe(self) -> Iterable[Metric]:
        # Names only: the registry refuses a second collector exporting the same ones.
        return [_family(name, counter, text) for name, counter, text in _DISK_BUFFER_FAMILIES]


def _counter_samples(family: MetricWrapperBase) -> list[tuple[dict[str, str], float]]:
    """The `_total` samples of a counter family: (labels, value)."""
    return [
        (sample.labels, sample.value)
        for metric in family.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]


def _gauge_value(family: MetricWrapperBase) -> float:
    """The value of an unlabelled gauge (a bound function is called)."""
    return sum(sample.value for metric in family.collect() for sample in metric.samples)


def _family(name: str, counter: bool, text: str, value: float | None = None) -> Metric:
    if counter:
        return CounterMetricFamily(f"{PREFIX}_{name}", text, value=value)
    return GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)


def _package_version() -> str:
    try:
        return metadata.version("hstream-bridge")
    except metadata.PackageNotFoundError:
        return __version__
