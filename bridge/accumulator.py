"""Batches per (stream, shard), one global byte budget, and the delivery tracking behind PUBACKs.

Design after aiokafka's producer (`message_accumulator.py`): records are added synchronously, in
the order messages arrive, into the open batch of their stream and shard. A batch closes when it
holds `batch_max_records` records or `batch_max_bytes` bytes, or when `linger` has passed since its
first record. The sender (bridge/sender.py) drains closed batches, one append in flight per shard,
so records of one partition key are stored in arrival order.

A stream's shards are known only after an asynchronous lookup (and maybe a create), so records of
a stream whose shard map is not known yet wait in that stream's `pending` list, in order.

Every record made from one MQTT message shares one `Delivery`; it resolves when the last of them
is stored (or parked in the dead-letter stream), and only then may the message be acknowledged.

The byte budget counts every record from `add()` until it is stored, at what it costs in memory
(encoded record, payload of the message it holds back, object overheads; see `Item`);
`pressure` reports when it is spent, and the service stops reading the MQTT socket until it is
back under the low-water mark.
"""

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Protocol, TypeVar

from bridge.hstream.records import framed_size
from bridge.hstream.shards import ShardMap

_T = TypeVar("_T")


class Settles(Protocol):
    """What a record reports to once it is stored (in its stream or as a dead letter)."""

    def record_done(self) -> None: ...


class Delivery:
    """Counts the records made from one message; done when all are stored.

    The MQTT source is told through `then` (its connection's callback and the message's
    ticket, called as the last record is stored); `wait()` makes a future for those who await
    it (CDC sources, tests). Only what is asked for is made: a future and its scheduled
    callback per message were a fifth of the bridge's allocations on the hot path, and every
    object per message in flight is one more for each pass of the cyclic collector to walk.
    """

    __slots__ = ("_arg", "_callback", "_future", "_loop", "_remaining")

    def __init__(self, records: int, loop: asyncio.AbstractEventLoop) -> None:
        self._remaining = records
        self._loop = loop
        self._future: asyncio.Future[None] | None = None
        self._callback: Callable[[Any], None] | None = None
        self._arg: object = None

    def record_done(self) -> None:
        self._remaining -= 1
        if self._remaining == 0:
            if self._callback is not None:
                callback, self._callback = self._callback, None
                callback(self._arg)
            if self._future is not None and not self._future.done():
                self._future.set_result(None)

    @property
    def done(self) -> bool:
        return self._remaining <= 0

    def then(self, callback: Callable[[_T], None], arg: _T) -> None:
        """Call `callback(arg)` once every record is stored (now, if they are); one callback."""
        if self._remaining <= 0:
            callback(arg)
        else:
            self._callback = callback
            self._arg = arg

    def wait(self) -> asyncio.Future[None]:
        if self._future is None:
            self._future = self._loop.create_future()
            if self._remaining <= 0:
                self._future.set_result(None)
        return self._future


RECORD_OVERHEAD = 100
"""Bytes an Item costs besides its encoded record (the object and its place in a batch)."""

MESSAGE_OVERHEAD = 900
"""Bytes one held MQTT message costs besides its payload, until it is acknowledged: the message
tuple and topic, its Delivery and future, and the source's acknowledgement callback. Measured
with tracemalloc (about 1,370 bytes per 200-byte message in all); charged to its first record."""


class Item:
    """One encoded record on its way to a stream.

    `size` is the encoded record as framed in an append (what batch limits count, and what the
    store's record limit measures); `cost` is what holding it costs in
    memory (what the byte budget counts): the record, plus, for the first record made from a
    message, the message itself until it is acknowledged.
    """

    __slots__ = ("cost", "data", "delivery", "key", "received_at", "rule_id", "size")

    def __init__(
        self,
        data: bytes,
        key: str,
        delivery: Settles | None,
        received_at: float,
        rule_id: str,
        held: int = 0,
    ) -> None:
        self.data = data
        self.key = key
        self.size = framed_size(data)
        self.cost = self.size + RECORD_OVERHEAD + held
        self.delivery = delivery
        self.received_at = received_at
        self.rule_id = rule_id

    @property
    def held(self) -> int:
        """The part of `cost` that is the held message (0 but for a message's first record)."""
        return self.cost - self.size - RECORD_OVERHEAD


class Batch:
    __slots__ = ("created", "items", "size", "split")

    def __init__(self, created: float, *, split: bool = False) -> None:
        self.items: list[Item] = []
        self.size = 0
        self.created = created
        self.split = split  # a part of a batch that kept failing (see Sender._append)


class ShardQueue:
    """The batches of one (stream, shard): at most one open, any number closed and waiting."""

    __slots__ = ("open", "ready", "sending", "shard_id", "stream", "timer")

    def __init__(self, stream: "StreamState", shard_id: int) -> None:
        self.stream = stream
        self.shard_id = shard_id
        self.open: Batch | None = None
        self.ready: deque[Batch] = deque()
        self.sending = False
        self.timer: asyncio.TimerHandle | None = None

    def items(self) -> Iterator[Item]:
        for batch in self.ready:
            yield from batch.items
        if self.open is not None:
            yield from self.open.items


class StreamState:
    __slots__ = ("last_added", "name", "pending", "resolving", "sending", "shard_map", "shards")

    def __init__(self, name: str) -> None:
        self.name = name
        # When the stream's newest batch was opened: close enough to its last record for
        # `prune_idle` (a stream that holds records is never pruned, whatever this says).
        self.last_added = time.monotonic()
        self.shard_map: ShardMap | None = None
        self.pending: list[Item] = []
        self.shards: dict[int, ShardQueue] = {}
        self.resolving = False
        self.sending = 0  # shard queues of this stream with an append in flight


class Accumulator:
    """Holds records until the sender stores them. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        *,
        batch_max_records: int,
        batch_max_bytes: int,
        linger: float,
        budget_bytes: int,
        on_ready: Callable[[ShardQueue], None],
        on_new_stream: Callable[[StreamState], None],
        on_pressure: Callable[[bool], None] | None = None,
        low_water: float = 0.5,
    ) -> None:
        self.batch_max_records = batch_max_records
        self.batch_max_bytes = batch_max_bytes
        self.linger = linger
        self.budget_bytes = budget_bytes
        self._low_water_bytes = int(budget_bytes * low_water)
        self._on_ready = on_ready
        self._on_new_stream = on_new_stream
        self._on_pressure = on_pressure
        self.streams: dict[str, StreamState] = {}
        self.buffered_bytes = 0
        self.buffered_records = 0
        self.peak_bytes = 0  # the most ever buffered at once (the budget plus one socket read)
        self.under_pressure = False
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()

    # --- adding -------------------------------------------------------------------------------

    def add(self, stream: str, item: Item) -> None:
        """Queue one record; never refuses (the caller checks `under_pressure` to stop intake)."""
        state = self.streams.get(stream)
        if state is None:
            state = self.streams[stream] = StreamState(stream)
            state.resolving = True
            self._on_new_stream(state)
        self.buffered_bytes += item.cost
        self.buffered_records += 1
        if self.buffered_bytes > self.peak_bytes:
            self.peak_bytes = self.buffered_bytes
        self._idle.clear()
        if state.resolving or state.shard_map is None:
            state.pending.append(item)
        else:
            self._add_to_shard(state, state.shard_map.shard_for(item.key), item)
        if not self.under_pressure and self.buffered_bytes >= self.budget_bytes:
            self.under_pressure = True
            if self._on_pressure is not None:
                self._on_pressure(True)

    def _add_to_shard(self, state: StreamState, shard_id: int, item: Item) -> None:
        queue = state.shards.get(shard_id)
        if queue is None:
            queue = state.shards[shard_id] = ShardQueue(state, shard_id)
        batch = queue.open
        if batch is not None and (
            batch.size + item.size > self.batch_max_bytes
            or len(batch.items) >= self.batch_max_records
        ):
            self._close(queue)
            batch = None
        if batch is None:
            batch = queue.open = Batch(time.monotonic())
            state.last_added = batch.created  # idleness needs no clock read per record
            # While an append is in flight the batch cannot go anyway: it gets its linger when
            # the shard is free (`close_if_idle`), not a timer per batch here (with many shards
            # that was a timer every few records).
            if self.linger > 0 and not queue.sending:
                queue.timer = self._loop.call_later(self.linger, self._linger_expired, queue, batch)
        batch.items.append(item)
        batch.size += item.size
        if len(batch.items) >= self.batch_max_records or (self.linger <= 0 and not queue.sending):
            self._close(queue)

    def _linger_expired(self, queue: ShardQueue, batch: Batch) -> None:
        if queue.open is batch:
            queue.timer = None
            self._close(queue)

    def _close(self, queue: ShardQueue) -> None:
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        if queue.open is not None and queue.open.items:
            queue.ready.append(queue.open)
        queue.open = None
        if not queue.sending and not queue.stream.resolving:
            self._on_ready(queue)

    def coalesce(self, queue: ShardQueue) -> Batch:
        """Grow the next batch to send with the batches (and records) waiting behind it.

        Batches closed by linger while an append was in flight would otherwise go one small
        append each; merged, they fill appends up to the record and byte limits, which is what
        lets a busy shard keep up. Order is kept: records only move forward into earlier appends.
        """
        first = queue.ready[0]
        if first.split:
            return first  # a part of a failing batch goes alone, or splitting never ends
        max_records, max_bytes = self.batch_max_records, self.batch_max_bytes
        while len(queue.ready) > 1:
            following = queue.ready[1]
            if (
                following.split
                or len(first.items) + len(following.items) > max_records
                or first.size + following.size > max_bytes
            ):
                return first
            first.items.extend(following.items)
            first.size += following.size
            del queue.ready[1]
        following_open = queue.open
        if (
            following_open is not None
            and len(first.items) + len(following_open.items) <= max_records
            and first.size + following_open.size <= max_bytes
        ):
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            first.items.extend(following_open.items)
            first.size += following_open.size
            queue.open = None
        return first

    def close_if_idle(self, queue: ShardQueue) -> None:
        """The shard's append is done and nothing else is ready: the open batch goes now if its
        linger is over (or there is none), else its timer runs for the rest of it."""
        batch = queue.open
        if queue.ready or batch is None or queue.timer is not None:
            return
        wait = batch.created + self.linger - time.monotonic() if self.linger > 0 else 0.0
        if wait <= 0:
            self._close(queue)
        else:
            queue.timer = self._loop.call_later(wait, self._linger_expired, queue, batch)

    def close_all(self) -> None:
        """Close every open batch now (shutdown flush)."""
        for state in self.streams.values():
            for queue in state.shards.values():
                if queue.open is not None:
                    self._close(queue)

    # --- shard maps ---------------------------------------------------------------------------

    def take_all(self, state: StreamState) -> list[Item]:
        """Remove and return every record of a stream not in flight, keeping per-key order.

        Records of one key live in one shard queue in order, and pending records came after
        all of them, so concatenating the queues and then the pending list keeps that order.
        """
        items: list[Item] = []
        for queue in state.shards.values():
            if queue.timer is not None:
                queue.timer.cancel()
                queue.timer = None
            items.extend(queue.items())
            queue.ready.clear()
            queue.open = None
        items.extend(state.pending)
        state.pending = []
        return items

    def set_shard_map(self, state: StreamState, shard_map: ShardMap) -> None:
        """Install a stream's (new) shard map and place its waiting records by it."""
        items = self.take_all(state)
        state.shard_map = shard_map
        state.resolving = False
        live = set(shard_map.shard_ids)
        state.shards = {
            sid: queue for sid, queue in state.shards.items() if sid in live or queue.sending
        }
        for item in items:
            self._add_to_shard(state, shard_map.shard_for(item.key), item)
        for queue in list(state.shards.values()):
            if queue.ready and not queue.sending:
                self._on_ready(queue)

    def prune_idle(self, idle_for: float) -> list[str]:
        """Forget streams that hold nothing and got no record for `idle_for` seconds.

        Rendered stream names can be unbounded over time (a template over a device id); their
        per-stream state must not be. A pruned stream is looked up again on its next record.
        """
        now = time.monotonic()
        pruned = []
        for name, state in list(self.streams.items()):
            if (
                now - state.last_added >= idle_for
                and not state.resolving
                and not state.sending
                and not state.pending
                and all(
                    queue.open is None and not queue.ready and not queue.sending
                    for queue in state.shards.values()
                )
            ):
                del self.streams[name]
                pruned.append(name)
        return pruned

    def resize(self, item: Item, data: bytes) -> None:
        """Replace a buffered record's bytes (a dead letter cut to fit), keeping the budget true."""
        held = item.held
        old_cost = item.cost
        item.data = data
        item.size = framed_size(data)
        item.cost = item.size + RECORD_OVERHEAD + held
        self.buffered_bytes += item.cost - old_cost

    # --- releasing ----------------------------------------------------------------------------

    def release(self, items: list[Item]) -> None:
        """Forget records that are stored, dead-lettered or given up."""
        size = 0
        for item in items:
            size += item.cost
        self.buffered_bytes -= size
        self.buffered_records -= len(items)
        if self.under_pressure and self.buffered_bytes <= self._low_water_bytes:
            self.under_pressure = False
            if self._on_pressure is not None:
                self._on_pressure(False)
        if self.buffered_records == 0:
            self._idle.set()

    async def wait_empty(self) -> None:
        await self._idle.wait()
