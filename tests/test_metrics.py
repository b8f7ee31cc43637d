import gc
import timeit
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from bridge.hstream.errors import (
    HStreamError,
    HStreamUnavailable,
    InternalError,
    StreamNotFound,
    WrongServer,
)
from bridge.metrics import BridgeMetrics, DiskBufferStats, error_code


@dataclass(frozen=True)
class FakeRule:
    id: str


@dataclass(frozen=True)
class FakeRoute:
    rule: FakeRule


@dataclass
class FakeItem:
    rule_id: str
    received_at: float
    size: int


@dataclass
class FakeDiskBuffer:
    bytes_on_disk: int = 0
    backlog_records: int = 0
    backlog_bytes: int = 0
    forwarded_total: int = 0
    fsyncs_total: int = 0
    written_total: int = 0
    limit_bytes: int = 1 << 30
    accepting: bool = True
    age: float | None = None

    def oldest_age(self) -> float | None:
        return self.age


DISK_BUFFER_FAMILIES = {
    "hstream_bridge_disk_buffer_bytes": "gauge",
    "hstream_bridge_disk_buffer_limit_bytes": "gauge",
    "hstream_bridge_disk_buffer_backlog_records": "gauge",
    "hstream_bridge_disk_buffer_backlog_bytes": "gauge",
    "hstream_bridge_disk_buffer_oldest_age_seconds": "gauge",
    "hstream_bridge_disk_buffer_accepting": "gauge",
    "hstream_bridge_disk_buffer_written_records": "counter",
    "hstream_bridge_disk_buffer_forwarded_records": "counter",
    "hstream_bridge_disk_buffer_fsyncs": "counter",
}


def value(m: BridgeMetrics, name: str, **labels: str) -> float:
    found = m.registry.get_sample_value(name, labels)
    return 0.0 if found is None else found


def test_two_bridges_in_one_process_count_separately() -> None:
    first, second = BridgeMetrics(), BridgeMetrics()
    first.messages_unmatched.inc(3)
    second.messages_unmatched.inc()
    assert value(first, "hstream_bridge_messages_unmatched_total") == 3
    assert value(second, "hstream_bridge_messages_unmatched_total") == 1


def test_render_is_prometheus_text_with_every_family() -> None:
    body, content_type = BridgeMetrics().render()
    assert content_type.startswith("text/plain")
    families = {f.name: f.type for f in text_string_to_metric_families(body.decode())}
    expected = {
        "hstream_bridge_messages_received": "counter",
        "hstream_bridge_messages_matched": "counter",
        "hstream_bridge_messages_unmatched": "counter",
        "hstream_bridge_records_success": "counter",
        "hstream_bridge_records_failed": "counter",
        "hstream_bridge_records_dropped": "counter",
        "hstream_bridge_records_dead_lettered": "counter",
        "hstream_bridge_appends_retried": "counter",
        "hstream_bridge_queuing_records": "gauge",
        "hstream_bridge_queuing_bytes": "gauge",
        "hstream_bridge_queuing_bytes_peak": "gauge",
        "hstream_bridge_buffer_budget_bytes": "gauge",
        "hstream_bridge_intake_paused": "gauge",
        "hstream_bridge_inflight_appends": "gauge",
        "hstream_bridge_batch_records": "histogram",
        "hstream_bridge_batch_bytes": "histogram",
        "hstream_bridge_append_duration_seconds": "histogram",
        "hstream_bridge_end_to_end_latency_seconds": "histogram",
        "hstream_bridge_mqtt_connected": "gauge",
        "hstream_bridge_mqtt_reconnects": "counter",
        "hstream_bridge_hstream_reachable": "gauge",
        "hstream_bridge_hstream_errors": "counter",
        "hstream_bridge_rules_loaded": "gauge",
        "hstream_bridge_build_info": "gauge",
        "hstream_bridge_gc_seconds": "counter",
    }
    for name, kind in expected.items():
        assert families.get(name) == kind, name


def test_labels_are_bounded_never_topic_or_client_id() -> None:
    m = BridgeMetrics()
    families = [v for v in vars(m).values() if isinstance(v, MetricWrapperBase)]
    assert len(families) >= 20
    for family in families:
        labelnames = set(family._labelnames)
        assert labelnames <= {"qos", "rule", "stream", "reason", "code"}, labelnames


def test_build_info_carries_the_version() -> None:
    m = BridgeMetrics(version="9.9.9")
    assert value(m, "hstream_bridge_build_info", version="9.9.9") == 1


def test_received_counts_by_qos_and_matches_per_rule() -> None:
    m = BridgeMetrics()
    m.observe_received(1, [FakeRoute(FakeRule("a")), FakeRoute(FakeRule("b"))])
    m.observe_received(1, [FakeRoute(FakeRule("a"))])
    m.observe_received(0, [])
    assert value(m, "hstream_bridge_messages_received_total", qos="1") == 2
    assert value(m, "hstream_bridge_messages_received_total", qos="0") == 1
    assert value(m, "hstream_bridge_messages_matched_total", rule="a") == 2
    assert value(m, "hstream_bridge_messages_matched_total", rule="b") == 1
    assert value(m, "hstream_bridge_messages_unmatched_total") == 1


def test_qos_series_and_drop_reasons_exist_before_the_first_event() -> None:
    m = BridgeMetrics()
    get = m.registry.get_sample_value
    for qos in ("0", "1", "2"):
        assert get("hstream_bridge_messages_received_total", {"qos": qos}) == 0
    for reason in ("qos0_overflow", "shutdown"):
        assert get("hstream_bridge_records_dropped_total", {"reason": reason}) == 0


def test_stored_batch_counts_success_per_rule_and_stream_and_latencies() -> None:
    m = BridgeMetrics()
    items = [FakeItem("a", 10.0, 100), FakeItem("a", 10.5, 200), FakeItem("b", 11.0, 300)]
    m.observe_stored("temps", items, append_seconds=0.004, now=11.002)
    assert value(m, "hstream_bridge_records_success_total", rule="a", stream="temps") == 2
    assert value(m, "hstream_bridge_records_success_total", rule="b", stream="temps") == 1
    assert value(m, "hstream_bridge_batch_records_count") == 1
    assert value(m, "hstream_bridge_batch_records_sum") == 3
    assert value(m, "hstream_bridge_batch_bytes_sum") == 600
    assert value(m, "hstream_bridge_append_duration_seconds_sum") == pytest.approx(0.004)
    assert value(m, "hstream_bridge_end_to_end_latency_seconds_count") == 3
    assert value(m, "hstream_bridge_end_to_end_latency_seconds_sum") == pytest.approx(
        1.002 + 0.502 + 0.002
    )
    # The 0.002 s record falls in the 2.5 ms bucket, the others only from 1 s on.
    assert value(m, "hstream_bridge_end_to_end_latency_seconds_bucket", le="0.0025") == 1
    assert value(m, "hstream_bridge_end_to_end_latency_seconds_bucket", le="1.0") == 2
    assert value(m, "hstream_bridge_end_to_end_latency_seconds_bucket", le="2.5") == 3


def test_an_empty_stored_batch_observes_nothing() -> None:
    m = BridgeMetrics()
    m.observe_stored("temps", [], append_seconds=0.1, now=1.0)
    assert value(m, "hstream_bridge_batch_records_count") == 0


def test_failed_dead_lettered_and_dropped_records_are_counted_by_reason() -> None:
    m = BridgeMetrics()
    m.observe_failed("temps", [FakeItem("a", 0, 1), FakeItem("a", 0, 1)], "rejected")
    m.observe_dead_letters([FakeItem("a", 0, 1), FakeItem("b", 0, 1)], "record_too_large")
    m.observe_dead_letter("b", "invalid_json")
    m.observe_dropped("qos0_overflow", records=2)
    m.observe_dropped("shutdown")
    assert (
        value(m, "hstream_bridge_records_failed_total", rule="a", stream="temps", reason="rejected")
        == 2
    )
    dead = "hstream_bridge_records_dead_lettered_total"
    assert value(m, dead, rule="a", reason="record_too_large") == 1
    assert value(m, dead, rule="b", reason="record_too_large") == 1
    assert value(m, dead, rule="b", reason="invalid_json") == 1
    assert value(m, "hstream_bridge_records_dropped_total", reason="qos0_overflow") == 2
    assert value(m, "hstream_bridge_records_dropped_total", reason="shutdown") == 1


def test_retry_counts_the_stream_and_the_error_code() -> None:
    m = BridgeMetrics()
    m.observe_retry("temps", WrongServer("moved"))
    m.observe_retry("temps", HStreamUnavailable("down"))
    assert value(m, "hstream_bridge_appends_retried_total", stream="temps") == 2
    assert value(m, "hstream_bridge_hstream_errors_total", code="800") == 1
    assert value(m, "hstream_bridge_hstream_errors_total", code="UNAVAILABLE") == 1


def test_error_code_is_the_hstream_code_or_the_grpc_status_and_bounded() -> None:
    assert error_code(StreamNotFound("x")) == "200"
    assert error_code(InternalError("x")) == "0"
    assert error_code(HStreamUnavailable("x")) == "UNAVAILABLE"
    assert error_code(HStreamError("x", code=123456)) == "other"
    rpc = grpc.aio.AioRpcError(
        grpc.StatusCode.DEADLINE_EXCEEDED, grpc.aio.Metadata(), grpc.aio.Metadata()
    )
    assert error_code(rpc) == "DEADLINE_EXCEEDED"
    assert error_code(TimeoutError()) == "DEADLINE_EXCEEDED"
    assert error_code(ValueError("free text never becomes a label")) == "UNKNOWN"


def test_bound_gauges_read_the_pipeline_at_scrape_time() -> None:
    class Buffer:
        buffered_records = 0
        buffered_bytes = 0
        peak_bytes = 0

    class Sender:
        inflight = 0

    m = BridgeMetrics()
    buffer, sender = Buffer(), Sender()
    m.bind_gauges(buffer, sender)
    buffer.buffered_records, buffer.buffered_bytes, sender.inflight = 7, 700, 2
    buffer.peak_bytes = 900
    assert value(m, "hstream_bridge_queuing_records") == 7
    assert value(m, "hstream_bridge_queuing_bytes") == 700
    assert value(m, "hstream_bridge_queuing_bytes_peak") == 900
    assert value(m, "hstream_bridge_inflight_appends") == 2


def test_gc_seconds_grow_by_generation_as_the_collector_runs() -> None:
    m = BridgeMetrics()
    before = {g: value(m, "hstream_bridge_gc_seconds_total", generation=str(g)) for g in range(3)}
    for _ in range(3):
        gc.collect()  # a full collection counts under generation 2
    after = {g: value(m, "hstream_bridge_gc_seconds_total", generation=str(g)) for g in range(3)}
    assert after[2] > before[2]
    assert after[0] >= before[0]
    assert after[1] >= before[1]
    # One hook per process, however many bridges (registries) there are.
    BridgeMetrics()
    assert sum(hook.__qualname__ == "_GcTime._on_gc" for hook in gc.callbacks) == 1


def disk_buffer_values(m: BridgeMetrics) -> dict[str, float]:
    """The disk buffer samples of one scrape of the rendered text, by sample name."""
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(m.render()[0].decode())
        if family.name.startswith("hstream_bridge_disk_buffer_")
        for sample in family.samples
    }


def test_disk_buffer_families_do_not_exist_unbound() -> None:
    m = BridgeMetrics()  # memory mode: nothing binds a disk buffer
    assert b"disk_buffer" not in m.render()[0]
    assert disk_buffer_values(m) == {}


def test_bound_disk_buffer_is_read_at_scrape_time() -> None:
    m = BridgeMetrics()
    disk = FakeDiskBuffer(limit_bytes=1000)
    stats: DiskBufferStats = disk
    m.bind_disk_buffer(stats)
    families = {
        f.name: f.type
        for f in text_string_to_metric_families(m.render()[0].decode())
        if f.name.startswith("hstream_bridge_disk_buffer_")
    }
    assert families == DISK_BUFFER_FAMILIES
    assert disk_buffer_values(m) == {
        "hstream_bridge_disk_buffer_bytes": 0,
        "hstream_bridge_disk_buffer_limit_bytes": 1000,
        "hstream_bridge_disk_buffer_backlog_records": 0,
        "hstream_bridge_disk_buffer_backlog_bytes": 0,
        "hstream_bridge_disk_buffer_oldest_age_seconds": 0,  # empty: None reads as 0
        "hstream_bridge_disk_buffer_accepting": 1,
        "hstream_bridge_disk_buffer_written_records_total": 0,
        "hstream_bridge_disk_buffer_forwarded_records_total": 0,
        "hstream_bridge_disk_buffer_fsyncs_total": 0,
    }

    disk.bytes_on_disk, disk.backlog_records, disk.backlog_bytes = 900, 12, 840
    disk.written_total, disk.forwarded_total, disk.fsyncs_total = 40, 28, 5
    disk.accepting, disk.age = False, 7.5
    assert disk_buffer_values(m) == {
        "hstream_bridge_disk_buffer_bytes": 900,
        "hstream_bridge_disk_buffer_limit_bytes": 1000,
        "hstream_bridge_disk_buffer_backlog_records": 12,
        "hstream_bridge_disk_buffer_backlog_bytes": 840,
        "hstream_bridge_disk_buffer_oldest_age_seconds": 7.5,
        "hstream_bridge_disk_buffer_accepting": 0,
        "hstream_bridge_disk_buffer_written_records_total": 40,
        "hstream_bridge_disk_buffer_forwarded_records_total": 28,
        "hstream_bridge_disk_buffer_fsyncs_total": 5,
    }

    disk.accepting, disk.age, disk.backlog_records = True, None, 0
    assert value(m, "hstream_bridge_disk_buffer_accepting") == 1
    assert value(m, "hstream_bridge_disk_buffer_oldest_age_seconds") == 0
    assert value(m, "hstream_bridge_disk_buffer_backlog_records") == 0


def test_disk_buffer_oldest_age_is_never_negative() -> None:
    m = BridgeMetrics(process=False)
    m.bind_disk_buffer(FakeDiskBuffer(age=-0.25))  # a clock step back
    assert value(m, "hstream_bridge_disk_buffer_oldest_age_seconds") == 0


def test_binding_a_disk_buffer_again_reads_the_new_one_once() -> None:
    m = BridgeMetrics(process=False)
    m.bind_disk_buffer(FakeDiskBuffer(written_total=3))
    m.bind_disk_buffer(FakeDiskBuffer(written_total=9))
    body = m.render()[0].decode()
    assert body.count("# TYPE hstream_bridge_disk_buffer_written_records") == 1
    assert value(m, "hstream_bridge_disk_buffer_written_records_total") == 9


def test_disk_buffer_families_are_free_until_scraped() -> None:
    class Counting(FakeDiskBuffer):
        reads = 0

        def oldest_age(self) -> float | None:
            self.reads += 1
            return super().oldest_age()

    m = BridgeMetrics(process=False)
    disk = Counting()
    m.bind_disk_buffer(disk)
    disk.written_total += 1000  # the buffer's own counters: nothing in metrics runs
    assert disk.reads == 0
    m.render()
    assert disk.reads == 1


def test_child_returns_the_same_child_as_labels() -> None:
    m = BridgeMetrics()
    child = m.child(m.records_success, "a", "temps")
    assert child is m.records_success.labels(rule="a", stream="temps")
    assert m.child(m.records_success, "a", "temps") is child


def test_cached_child_inc_is_cheaper_than_labels_inc() -> None:
    # Measured on the dev machine: labels(...).inc() ~1.0-1.4 us, cached child ~0.27 us. The
    # margin asked here (cached at most 0.8x) leaves room for a loaded machine.
    m = BridgeMetrics()
    family = m.records_success

    def with_labels() -> None:
        family.labels("a", "temps").inc()

    def cached() -> None:
        m.child(family, "a", "temps").inc()

    n = 20_000
    slow = min(timeit.repeat(with_labels, number=n, repeat=5))
    fast = min(timeit.repeat(cached, number=n, repeat=5))
    assert fast < 0.8 * slow, (fast / n, slow / n)


def stream_series(m: BridgeMetrics) -> dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]]:
    """Per `stream` label value: the (sample name, labels) in the scrape text."""
    found: dict[str, set[tuple[str, tuple[tuple[str, str], ...]]]] = {}
    for family in text_string_to_metric_families(m.render()[0].decode()):
        for sample in family.samples:
            if "stream" in sample.labels:
                labels = tuple(sorted(sample.labels.items()))
                found.setdefault(sample.labels["stream"], set()).add((sample.name, labels))
    return found


def test_forget_stream_removes_its_series_and_keeps_the_others() -> None:
    m = BridgeMetrics(process=False)
    for stream in ("dev_1", "dev_2", "temps"):
        m.observe_stored(stream, [FakeItem("a", 0.0, 1), FakeItem("b", 0.0, 1)], 0.01, 0.02)
        m.observe_failed(stream, [FakeItem("a", 0.0, 1)], "rejected")
        m.observe_retry(stream, WrongServer("moved"))
    before = stream_series(m)
    assert set(before) == {"dev_1", "dev_2", "temps"}
    # success for two rules, failed once, retried once: _total and _created of each.
    assert len(before["dev_1"]) == 8

    m.forget_stream("dev_1")
    m.forget_stream("dev_1")  # twice, or a stream never seen: nothing happens
    m.forget_stream("never_seen")
    after = stream_series(m)
    assert set(after) == {"dev_2", "temps"}
    assert after == {name: before[name] for name in ("dev_2", "temps")}
    assert value(m, "hstream_bridge_records_success_total", rule="a", stream="temps") == 1
    assert value(m, "hstream_bridge_hstream_errors_total", code="800") == 3  # not per stream

    # A forgotten stream that comes back counts again from 0 (a counter reset to Prometheus).
    m.observe_stored("dev_1", [FakeItem("a", 0.0, 1)], 0.01, 0.02)
    assert value(m, "hstream_bridge_records_success_total", rule="a", stream="dev_1") == 1
    assert value(m, "hstream_bridge_records_success_total", rule="b", stream="dev_1") == 0


def test_forgetting_idle_streams_bounds_the_scrape() -> None:
    m = BridgeMetrics(process=False)
    empty = len(m.render()[0])
    streams = [f"device_{n}" for n in range(2000)]
    for stream in streams:
        m.observe_stored(stream, [FakeItem("a", 0.0, 1)], 0.01, 0.02)
    assert len(m.render()[0]) > empty + 2000 * 150  # two lines (_total, _created) per stream
    for stream in streams:
        m.forget_stream(stream)
    body = m.render()[0]
    assert b"device_" not in body
    assert len(body) < empty + 1000  # histogram and matched values changed, nothing else
    assert m._stream_children == {}
    assert not any(key[0] == id(m.records_success) for key in m._children)
