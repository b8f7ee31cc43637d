"""The sender alone, against an in-memory append target that fails on request."""

import asyncio
from collections.abc import Callable, Sequence

import grpc
import pytest

from bridge.accumulator import Accumulator, Delivery, Item
from bridge.hstream import errors
from bridge.hstream._api import pb
from bridge.hstream.records import Compression, RecordId, encode_raw, framed_size
from bridge.hstream.shards import ShardMap, ShardRange, split_key_space
from bridge.sender import Sender, SenderConfig


class FakeTarget:
    """Streams in memory; `failures` is a queue of exceptions raised by the next appends."""

    def __init__(self, shards: int = 2) -> None:
        self.shards = shards
        self.streams: dict[str, dict[int, list[bytes]]] = {}
        self.failures: list[BaseException] = []
        self.created: list[str] = []
        self.inflight: dict[tuple[str, int], int] = {}
        self.max_inflight = 0
        self.appends = 0
        self.next_shard = 1
        # Payloads whose record fails every append it is in (a poison record), and how.
        self.poison: dict[bytes, BaseException] = {}
        # Streams whose appends fail with this, every time (e.g. a refusing dead-letter stream).
        self.refuse: dict[str, BaseException] = {}
        self.record_limit: int | None = None  # refuse a batch payload over this (RecordTooLarge)

    def add_stream(self, name: str) -> None:
        self.streams[name] = {}
        for _ in range(self.shards):
            self.streams[name][self.next_shard] = []
            self.next_shard += 1

    async def shard_map(self, stream: str) -> ShardMap:
        if stream not in self.streams:
            raise errors.StreamNotFound(f"stream {stream} not found")
        ids = sorted(self.streams[stream])
        return ShardMap(
            ShardRange(sid, start, end)
            for sid, (start, end) in zip(ids, split_key_space(len(ids)), strict=True)
        )

    async def create_stream(
        self, name: str, *, shard_count: int = 1, replication_factor: int = 1
    ) -> object:
        if name.startswith("9"):
            raise errors.InvalidName(f"bad name {name}")
        self.created.append(name)
        self.add_stream(name)
        return name

    async def append_batch(
        self, stream: str, shard_id: int, encoded: Sequence[bytes], compression: Compression
    ) -> list[RecordId]:
        slot = (stream, shard_id)
        self.inflight[slot] = self.inflight.get(slot, 0) + 1
        self.max_inflight = max(self.max_inflight, self.inflight[slot])
        try:
            await asyncio.sleep(0)
            self.appends += 1
            if self.failures:
                raise self.failures.pop(0)
            if stream in self.refuse:
                raise self.refuse[stream]
            for data in encoded if stream != "bridge_dead_letter" else ():
                record = pb.HStreamRecord()
                record.ParseFromString(data)
                if record.payload in self.poison:
                    raise self.poison[record.payload]
            if self.record_limit is not None and sum(map(framed_size, encoded)) > self.record_limit:
                raise errors.RecordTooLarge("batch over the record limit")
            if stream not in self.streams or shard_id not in self.streams[stream]:
                raise errors.StreamNotFound(f"stream {stream} not found")
            self.streams[stream][shard_id].extend(encoded)
            return [RecordId(shard_id, self.appends, i) for i in range(len(encoded))]
        finally:
            self.inflight[slot] -= 1

    def invalidate(self, stream: str) -> None:
        pass

    def payloads(self, stream: str) -> list[bytes]:
        out = []
        for records in self.streams.get(stream, {}).values():
            for data in records:
                record = pb.HStreamRecord()
                record.ParseFromString(data)
                out.append(record.payload)
        return out


class Events:
    def __init__(self) -> None:
        self.stored_records = 0
        self.retries = 0
        self.dead: list[str] = []

    def stored(self, stream: str, items: Sequence[Item], append_seconds: float) -> None:
        self.stored_records += len(items)

    def retried(self, stream: str, error: BaseException) -> None:
        self.retries += 1

    def dead_lettered(self, items: Sequence[Item], reason: str) -> None:
        self.dead.extend(reason for _ in items)


def make(
    target: FakeTarget,
    on_fatal: Callable[[BaseException], None] | None = None,
    **config: object,
) -> tuple[Accumulator, Sender, Events]:
    events = Events()
    sender = Sender(
        target,
        SenderConfig(backoff_min=0.001, backoff_max=0.01, **config),  # type: ignore[arg-type]
        events,
        on_fatal=on_fatal,
    )
    acc = Accumulator(
        batch_max_records=10,
        batch_max_bytes=100_000,
        linger=0.001,
        budget_bytes=1_000_000,
        on_ready=sender.on_ready,
        on_new_stream=sender.on_new_stream,
    )
    sender.bind(acc)
    return acc, sender, events


def record(n: int, key: str = "", delivery: Delivery | None = None) -> Item:
    return Item(encode_raw(b"%d" % n, key, {"n": str(n)}), key, delivery, 0.0, "rule")


async def test_records_are_stored_in_order_per_key_with_one_append_per_shard() -> None:
    target = FakeTarget(shards=3)
    target.add_stream("s")
    acc, sender, events = make(target)
    for n in range(300):
        acc.add("s", record(n, key=f"k{n % 5}"))
    assert await sender.flush(10)
    assert target.max_inflight == 1
    assert events.stored_records == 300
    by_key: dict[str, list[int]] = {}
    for records in target.streams["s"].values():
        for data in records:
            r = pb.HStreamRecord()
            r.ParseFromString(data)
            by_key.setdefault(r.header.key, []).append(int(r.payload))
    assert all(v == sorted(v) for v in by_key.values())
    assert sum(len(v) for v in by_key.values()) == 300
    await sender.aclose()


async def test_delivery_resolves_only_after_retries_succeed() -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.failures = [errors.HStreamUnavailable("down")] * 3
    acc, sender, events = make(target)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(1, delivery=delivery))
    await asyncio.wait_for(delivery.wait(), 5)
    assert events.retries == 3
    assert target.payloads("s") == [b"1"]
    await sender.aclose()


async def test_missing_stream_is_created_on_first_use() -> None:
    target = FakeTarget()
    acc, sender, _ = make(target, shard_count=2)
    for n in range(20):
        acc.add("new_stream", record(n, key=str(n)))
    assert await sender.flush(5)
    assert target.created == ["new_stream"]
    assert sorted(int(p) for p in target.payloads("new_stream")) == list(range(20))
    await sender.aclose()


async def test_stream_deleted_mid_flight_is_recreated_and_nothing_lost() -> None:
    target = FakeTarget()
    target.add_stream("s")
    acc, sender, _ = make(target)
    for n in range(10):
        acc.add("s", record(n))
    assert await sender.flush(5)
    del target.streams["s"]  # deleted behind the bridge's back
    for n in range(10, 30):
        acc.add("s", record(n))
    assert await sender.flush(5)
    assert target.created == ["s"]
    assert [int(p) for p in target.payloads("s")] == list(range(10, 30))
    await sender.aclose()


async def test_oversized_batch_is_split_and_refused_record_dead_lettered() -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.add_stream("bridge_dead_letter")
    target.failures = [
        errors.RecordTooLarge("too big"),
        errors.RecordTooLarge("too big"),
    ]
    acc, sender, events = make(target)
    for n in range(4):
        acc.add("s", record(n))
    assert await sender.flush(5)
    assert sorted(int(p) for p in target.payloads("s")) == [0, 1, 2, 3]
    target.failures = [errors.InvalidArgument("refused", code=207)]
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(99, delivery=delivery))
    await asyncio.wait_for(delivery.wait(), 5)
    assert events.dead == ["rejected_by_hstreamdb"]
    letters = target.streams["bridge_dead_letter"]
    parsed = pb.HStreamRecord()
    parsed.ParseFromString(next(data for shard in letters.values() for data in shard))
    assert parsed.payload == b"99"
    attributes = dict(parsed.header.attributes)
    assert attributes["reason"] == "rejected_by_hstreamdb"
    assert attributes["stream"] == "s"
    assert attributes["n"] == "99"
    await sender.aclose()


async def test_invalid_stream_name_goes_to_dead_letters() -> None:
    target = FakeTarget()
    target.add_stream("bridge_dead_letter")
    acc, sender, events = make(target)
    acc.add("9bad", record(5))
    assert await sender.flush(5)
    assert events.dead == ["invalid_stream_name"]
    assert target.payloads("bridge_dead_letter") == [b"5"]
    await sender.aclose()


@pytest.mark.parametrize("within", [0.05])
async def test_flush_reports_timeout_while_store_is_down(within: float) -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.failures = [errors.HStreamUnavailable("down")] * 10_000
    acc, sender, _ = make(target)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(1, delivery=delivery))
    assert not await sender.flush(within)
    assert not delivery.done
    assert acc.buffered_records == 1
    async with asyncio.timeout(2):  # cancelled mid-retry, not after 10,000 retries
        await sender.aclose()
    leftover = [t for t in asyncio.all_tasks() if t.get_name().startswith(("append:", "resolve:"))]
    assert leftover == [], "aclose() must not leave a retrying task behind"


async def test_unexpected_errors_are_retried_not_lost() -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.failures = [RuntimeError("a bug in a lower layer")]
    lookups = 0
    real_shard_map = target.shard_map

    async def flaky_shard_map(stream: str) -> ShardMap:
        nonlocal lookups
        lookups += 1
        if lookups == 1:
            raise ValueError("a stream has at least one active shard")
        return await real_shard_map(stream)

    target.shard_map = flaky_shard_map  # type: ignore[method-assign]
    acc, sender, events = make(target)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(7, delivery=delivery))
    await asyncio.wait_for(delivery.wait(), 5)
    assert target.payloads("s") == [b"7"]
    assert lookups == 2
    assert events.retries == 2
    await sender.aclose()


def letters(target: FakeTarget) -> list[pb.HStreamRecord]:
    out = []
    for shard in target.streams.get("bridge_dead_letter", {}).values():
        for data in shard:
            parsed = pb.HStreamRecord()
            parsed.ParseFromString(data)
            out.append(parsed)
    return out


def blocked(sender: Sender) -> str | None:
    return sender.dead_letters_blocked


async def test_a_refused_dead_letter_is_retried_never_settled() -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.add_stream("bridge_dead_letter")
    target.poison[b"1"] = errors.InvalidArgument("refused for good")
    target.refuse["bridge_dead_letter"] = errors.InvalidArgument("the letter is refused too")
    acc, sender, _ = make(target)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(1, delivery=delivery))
    assert not await sender.flush(0.3)
    assert not delivery.done, "a message whose dead letter is not stored must not be acked"
    assert blocked(sender) is not None
    assert acc.buffered_records == 1
    del target.refuse["bridge_dead_letter"]  # the store takes it now
    await asyncio.wait_for(delivery.wait(), 5)
    assert [r.payload for r in letters(target)] == [b"1"]
    assert blocked(sender) is None
    await sender.aclose()


async def test_a_dead_letter_too_large_for_the_store_is_cut_until_it_fits() -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.add_stream("bridge_dead_letter")
    big = b"p" * 50_000
    target.poison[big] = errors.InvalidArgument("refused")
    target.record_limit = 20_000  # the store's limit is below the bridge's --max-record-bytes
    acc, sender, _ = make(target)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", Item(encode_raw(big), "", delivery, 0.0, "rule"))
    await asyncio.wait_for(delivery.wait(), 5)
    (letter,) = letters(target)
    attributes = dict(letter.header.attributes)
    assert attributes["truncated"] == "true"
    assert attributes["original_size"] == str(len(big))
    assert big.startswith(letter.payload)
    assert 0 < len(letter.payload) <= 20_000
    assert acc.buffered_bytes == 0
    await sender.aclose()


async def test_a_missing_dead_letter_stream_is_waited_for_when_streams_are_not_created() -> None:
    target = FakeTarget()
    acc, sender, _ = make(target, auto_create=False)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("missing", record(3, delivery=delivery))
    assert not await sender.flush(0.3)
    assert not delivery.done
    assert sender.dead_letters_blocked is not None
    target.add_stream("bridge_dead_letter")  # an operator creates it
    await asyncio.wait_for(delivery.wait(), 5)
    assert [dict(r.header.attributes)["reason"] for r in letters(target)] == ["stream_not_found"]
    await sender.aclose()


@pytest.mark.parametrize(
    "error",
    [
        errors.InternalError("poison", code=0),
        errors.from_status(grpc.StatusCode.UNKNOWN, "boom"),
        errors.from_status(grpc.StatusCode.RESOURCE_EXHAUSTED, "too much"),
        errors.InvalidArgument("refused"),
    ],
    ids=["internal", "unknown", "resource_exhausted", "invalid_argument"],
)
async def test_a_poison_record_is_split_out_to_dead_letters_and_the_rest_flows(
    error: errors.HStreamError,
) -> None:
    target = FakeTarget(shards=1)
    target.add_stream("s")
    target.add_stream("other")
    target.add_stream("bridge_dead_letter")
    target.poison[b"5"] = error
    acc, sender, _ = make(target, error_retries=2)
    loop = asyncio.get_running_loop()
    deliveries = [Delivery(1, loop) for _ in range(10)]
    for n in range(10):
        acc.add("s", record(n, key="k", delivery=deliveries[n]))
    other = Delivery(1, loop)
    acc.add("other", record(100, delivery=other))
    await asyncio.wait_for(asyncio.gather(*(d.wait() for d in [*deliveries, other])), 10)
    assert [int(p) for p in target.payloads("s")] == [0, 1, 2, 3, 4, 6, 7, 8, 9]  # in order
    assert target.payloads("other") == [b"100"]
    (letter,) = letters(target)
    assert letter.payload == b"5"
    expected = "rejected_by_hstreamdb" if not error.retriable else "append_failed"
    assert dict(letter.header.attributes)["reason"] == expected
    assert type(error).__name__ in dict(letter.header.attributes)["error"]
    await sender.aclose()


async def test_a_burst_of_internal_errors_is_retried_without_splitting() -> None:
    target = FakeTarget(shards=1)
    target.add_stream("s")
    target.failures = [errors.InternalError("hiccup", code=0)] * 3
    acc, sender, events = make(target, error_retries=5)
    for n in range(10):
        acc.add("s", record(n))
    assert await sender.flush(5)
    assert [int(p) for p in target.payloads("s")] == list(range(10))
    assert events.retries == 3
    assert events.dead == []
    await sender.aclose()


async def test_outages_are_waited_out_beyond_the_error_retries() -> None:
    target = FakeTarget()
    target.add_stream("s")
    target.failures = [errors.HStreamUnavailable("down")] * 30
    acc, sender, events = make(target, error_retries=1)
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(1, delivery=delivery))
    await asyncio.wait_for(delivery.wait(), 10)
    assert target.payloads("s") == [b"1"]
    assert events.dead == []
    await sender.aclose()


async def test_stream_exists_after_stream_not_found_backs_off() -> None:
    target = FakeTarget()
    lookups = 0

    async def never_visible(stream: str) -> ShardMap:
        nonlocal lookups
        lookups += 1
        raise errors.StreamNotFound("not visible yet")

    async def exists(name: str, *, shard_count: int = 1, replication_factor: int = 1) -> object:
        raise errors.StreamExists("exists")

    target.shard_map = never_visible  # type: ignore[method-assign]
    target.create_stream = exists  # type: ignore[method-assign]
    acc, sender, _ = make(target)
    acc.add("s", record(1))
    await asyncio.sleep(0.3)
    # backoff 1-10 ms: a spinning loop would look thousands of times in 0.3 s
    assert 2 <= lookups <= 60
    await sender.aclose()


async def test_a_failing_metrics_call_neither_resends_nor_holds_back_a_batch() -> None:
    target = FakeTarget()
    target.add_stream("s")
    acc, sender, events = make(target)

    def broken(stream: str, items: Sequence[Item], append_seconds: float) -> None:
        raise RuntimeError("metrics broke")

    events.stored = broken  # type: ignore[method-assign]
    delivery = Delivery(1, asyncio.get_running_loop())
    acc.add("s", record(1, delivery=delivery))
    await asyncio.wait_for(delivery.wait(), 5)
    assert await sender.flush(5)
    assert target.payloads("s") == [b"1"]
    assert target.appends == 1
    await sender.aclose()


async def test_streams_past_max_streams_go_to_dead_letters() -> None:
    target = FakeTarget()
    target.add_stream("bridge_dead_letter")
    acc, sender, _ = make(target, max_streams=2)
    for n in range(4):
        acc.add(f"dev{n}", record(n))
        assert await sender.flush(5)
    assert target.created == ["dev0", "dev1"]
    reasons = [dict(r.header.attributes)["reason"] for r in letters(target)]
    assert reasons == ["stream_limit", "stream_limit"]
    await sender.aclose()


async def test_a_sender_task_that_dies_is_reported_as_fatal() -> None:
    target = FakeTarget()
    target.add_stream("s")
    fatal: list[BaseException] = []
    died = asyncio.Event()

    def on_fatal(exc: BaseException) -> None:
        fatal.append(exc)
        died.set()

    acc, sender, _ = make(target, on_fatal)

    def broken(state: object, shard_map: ShardMap) -> None:
        raise RuntimeError("set_shard_map broke")

    acc.set_shard_map = broken  # type: ignore[method-assign]
    acc.add("s", record(1))
    await asyncio.wait_for(died.wait(), 5)
    assert isinstance(fatal[0], RuntimeError)
    await sender.aclose()
