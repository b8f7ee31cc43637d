"""The accumulator alone: batch boundaries, linger, pressure, and order across shard-map changes."""

import asyncio

from bridge.accumulator import (
    RECORD_OVERHEAD,
    Accumulator,
    Batch,
    Delivery,
    Item,
    ShardQueue,
    StreamState,
)
from bridge.hstream.records import framed_size
from bridge.hstream.shards import ShardMap, ShardRange, split_key_space


def shard_map(count: int) -> ShardMap:
    return ShardMap(
        ShardRange(shard_id=100 + i, start=start, end=end)
        for i, (start, end) in enumerate(split_key_space(count))
    )


class Recorder:
    def __init__(self) -> None:
        self.ready: list[ShardQueue] = []
        self.new_streams: list[StreamState] = []
        self.pressure: list[bool] = []
        self.ready_event = asyncio.Event()

    def on_ready(self, queue: ShardQueue) -> None:
        self.ready.append(queue)
        self.ready_event.set()

    def make(self, **overrides: float) -> Accumulator:
        options: dict[str, float] = {
            "batch_max_records": 3,
            "batch_max_bytes": 1000,
            "linger": 60.0,
            "budget_bytes": 10_000,
        }
        options.update(overrides)
        return Accumulator(
            batch_max_records=int(options["batch_max_records"]),
            batch_max_bytes=int(options["batch_max_bytes"]),
            linger=options["linger"],
            budget_bytes=int(options["budget_bytes"]),
            on_ready=self.on_ready,
            on_new_stream=self.new_streams.append,
            on_pressure=self.pressure.append,
        )


def one_shard(rec: Recorder, **overrides: float) -> tuple[Accumulator, ShardQueue]:
    """An accumulator whose stream "s" has one shard, holding the record b"first"."""
    acc = rec.make(**overrides)
    acc.add("s", item(b"first"))
    acc.set_shard_map(acc.streams["s"], shard_map(1))
    return acc, acc.streams["s"].shards[100]


def timer_of(queue: ShardQueue) -> asyncio.TimerHandle | None:
    return queue.timer  # read through a call: an assert before does not narrow it here


def open_of(queue: ShardQueue) -> Batch | None:
    return queue.open


def item(data: bytes, key: str = "") -> Item:
    return Item(data, key, None, 0.0, "rule")


async def test_records_wait_in_pending_until_the_stream_has_a_shard_map() -> None:
    rec = Recorder()
    acc = rec.make()
    acc.add("s", item(b"a"))
    acc.add("s", item(b"b"))
    assert [state.name for state in rec.new_streams] == ["s"]
    state = acc.streams["s"]
    assert [i.data for i in state.pending] == [b"a", b"b"]
    acc.set_shard_map(state, shard_map(1))
    assert state.pending == []
    queue = state.shards[100]
    assert queue.open is not None
    assert [i.data for i in queue.open.items] == [b"a", b"b"]


async def test_batch_closes_at_max_records_and_at_max_bytes() -> None:
    rec = Recorder()
    acc = rec.make(batch_max_records=3, batch_max_bytes=100)
    acc.add("s", item(b"x"))
    acc.set_shard_map(acc.streams["s"], shard_map(1))
    acc.add("s", item(b"y"))
    acc.add("s", item(b"z"))
    queue = acc.streams["s"].shards[100]
    assert [[i.data for i in b.items] for b in queue.ready] == [[b"x", b"y", b"z"]]
    acc.add("s", item(b"a" * 60))
    acc.add("s", item(b"b" * 60))  # would pass 100 bytes: closes the batch before it
    assert [len(b.items) for b in queue.ready] == [3, 1]
    assert queue.open is not None
    assert queue.open.items[0].data == b"b" * 60


async def test_linger_closes_a_partial_batch() -> None:
    rec = Recorder()
    acc = rec.make(linger=0.01)
    acc.add("s", item(b"x"))
    acc.set_shard_map(acc.streams["s"], shard_map(1))
    queue = acc.streams["s"].shards[100]
    assert not queue.ready
    await asyncio.wait_for(rec.ready_event.wait(), 5)
    assert [[i.data for i in b.items] for b in queue.ready] == [[b"x"]]


async def test_zero_linger_keeps_filling_while_an_append_is_in_flight() -> None:
    rec = Recorder()
    acc, queue = one_shard(rec, linger=0, batch_max_records=100)
    assert len(queue.ready) == 1  # sender idle: goes at once
    queue.ready.clear()
    queue.sending = True
    for n in range(5):
        acc.add("s", item(b"%d" % n))
    assert not queue.ready
    assert queue.open is not None
    assert len(queue.open.items) == 5
    queue.sending = False
    acc.close_if_idle(queue)
    assert [len(b.items) for b in queue.ready] == [5]


async def test_a_batch_opened_during_an_append_gets_its_linger_when_the_shard_is_free() -> None:
    rec = Recorder()
    acc, queue = one_shard(rec, linger=0.05, batch_max_records=100)
    await asyncio.wait_for(rec.ready_event.wait(), 5)
    queue.ready.clear()
    rec.ready.clear()
    queue.sending = True  # an append is in flight: records wait in an open batch, no timer
    for n in range(5):
        acc.add("s", item(b"%d" % n))
    assert queue.open is not None
    assert queue.timer is None
    acc.close_if_idle(queue)  # the append is done, 0.05 s not over: a timer for the rest
    assert not queue.ready
    assert timer_of(queue) is not None
    queue.sending = False
    rec.ready_event.clear()
    await asyncio.wait_for(rec.ready_event.wait(), 5)
    assert [len(b.items) for b in queue.ready] == [5]
    assert rec.ready == [queue]

    queue.ready.clear()
    queue.sending = True
    acc.add("s", item(b"late"))
    await asyncio.sleep(0.06)  # its linger is over before the append in flight is done
    acc.close_if_idle(queue)
    assert [[i.data for i in b.items] for b in queue.ready] == [[b"late"]]
    assert (open_of(queue), timer_of(queue)) == (None, None)


async def test_pressure_reported_at_budget_and_cleared_at_low_water() -> None:
    rec = Recorder()
    items = [item(b"x" * 250) for _ in range(4)]
    cost = items[0].cost
    # memory, not just the record as framed in an append (250 bytes + 3 of framing)
    assert cost == framed_size(b"x" * 250) + RECORD_OVERHEAD == 253 + RECORD_OVERHEAD
    acc = rec.make(budget_bytes=4 * cost, batch_max_bytes=4 * cost)
    for it in items[:3]:
        acc.add("s", it)
    assert rec.pressure == []
    acc.add("s", items[3])
    assert rec.pressure == [True]
    assert acc.under_pressure
    acc.release(items[:1])
    assert rec.pressure == [True]  # 3/4 of the budget: still above half
    acc.release(items[1:3])
    assert rec.pressure == [True, False]
    assert acc.buffered_bytes == cost


async def test_a_held_message_is_charged_with_its_first_record() -> None:
    held = Item(b"r", "", None, 0.0, "rule", held=1000)
    assert (held.size, held.cost) == (3, 3 + RECORD_OVERHEAD + 1000)  # 1 byte, framed


async def test_reshard_keeps_per_key_order() -> None:
    rec = Recorder()
    acc = rec.make(batch_max_records=1000)
    keys = [f"dev{n % 7}" for n in range(200)]
    acc.add("s", item(b"0", keys[0]))
    state = acc.streams["s"]
    acc.set_shard_map(state, shard_map(2))
    for n, key in enumerate(keys[1:100], start=1):
        acc.add("s", item(b"%d" % n, key))
    state.resolving = True  # stream gone: records wait in pending
    for n, key in enumerate(keys[100:], start=100):
        acc.add("s", item(b"%d" % n, key))
    assert len(state.pending) == 100
    acc.set_shard_map(state, shard_map(3))
    seen: dict[str, list[int]] = {}
    for queue in state.shards.values():
        for it in queue.items():
            seen.setdefault(it.key, []).append(int(it.data))
    assert sum(len(v) for v in seen.values()) == 200
    for key, numbers in seen.items():
        assert numbers == sorted(numbers), key


async def test_delivery_resolves_after_its_last_record() -> None:
    delivery = Delivery(2, asyncio.get_running_loop())
    delivery.record_done()
    assert not delivery.done
    delivery.record_done()
    await asyncio.wait_for(delivery.wait(), 1)
    assert Delivery(0, asyncio.get_running_loop()).done


async def test_delivery_calls_back_once_as_its_last_record_is_stored() -> None:
    loop = asyncio.get_running_loop()
    calls: list[str] = []
    delivery = Delivery(2, loop)
    waiting = delivery.wait()
    delivery.then(calls.append, "then")
    delivery.record_done()
    assert calls == []
    assert not waiting.done()
    delivery.record_done()
    assert calls == ["then"]  # at once, not on a later loop iteration
    assert waiting.done()
    delivery.record_done()  # a record settled again (never expected) calls nobody twice
    assert calls == ["then"]
    done = Delivery(0, loop)
    done.then(calls.append, "already")
    assert calls == ["then", "already"]
    assert done.wait().done()


async def test_waiting_batches_are_merged_up_to_the_limits_in_order() -> None:
    rec = Recorder()
    acc = rec.make(batch_max_records=4, batch_max_bytes=1000)
    acc.add("s", item(b"0"))
    state = acc.streams["s"]
    acc.set_shard_map(state, shard_map(1))
    queue = state.shards[100]
    queue.sending = True  # an append is in flight: batches close by linger, one by one
    for n in range(1, 6):
        acc.add("s", item(b"%d" % n))
        acc._linger_expired(queue, queue.open)  # type: ignore[arg-type]
    assert [len(b.items) for b in queue.ready] == [2, 1, 1, 1, 1]
    acc.add("s", item(b"6"))  # left open
    first = acc.coalesce(queue)
    assert [i.data for i in first.items] == [b"0", b"1", b"2", b"3"]
    queue.ready.popleft()
    second = acc.coalesce(queue)
    assert [i.data for i in second.items] == [b"4", b"5", b"6"]  # the open batch joins too
    assert queue.open is None


async def test_idle_empty_streams_are_forgotten_busy_ones_kept() -> None:
    rec = Recorder()
    acc = rec.make(linger=60.0)
    for name in ("quiet", "busy", "waiting"):
        acc.add(name, item(b"x"))
    acc.set_shard_map(acc.streams["quiet"], shard_map(1))
    acc.set_shard_map(acc.streams["busy"], shard_map(1))
    quiet_queue = acc.streams["quiet"].shards[100]
    assert quiet_queue.open is not None
    sent = quiet_queue.open.items
    quiet_queue.open = None  # as if sent and stored
    acc.release(sent)
    assert acc.prune_idle(3600) == []  # nothing is idle for an hour yet
    assert acc.prune_idle(0) == ["quiet"]  # "busy" holds a record, "waiting" has no shard map
    assert sorted(acc.streams) == ["busy", "waiting"]
    acc.add("quiet", item(b"again"))  # comes back: looked up again
    assert [s.name for s in rec.new_streams] == ["quiet", "busy", "waiting", "quiet"]
