"""Subscription delivery: consumers, shard assignment, acks, redelivery and flow control.

One `SubscriptionRuntime` per subscription with live consumers (kept while the subscription
exists). Each shard of the stream is owned by at most one consumer; a joining consumer gets the
unowned shards and then shards from the busiest consumer until counts differ by at most one
(fewest-shards first); a leaving consumer's shards go to the consumers with the fewest shards.
A shard that changes owner has its unacked batches redelivered by the new owner at once.

Each `ShardCursor` tracks what was sent and what is acked. Progress (`Progress`: every batch up to
`acked_upto` done, plus the acked indexes of later batches) is saved with every ack request, so a
restarted store resumes right after what was acked. A batch is sent whole; when it is redelivered
after `ackTimeoutSeconds`, only its unacked records go out. Sending stops while the subscription
has `maxUnackedRecords` or more records unacked, and resumes as acks arrive.

A consumer's delivery loop sleeps on one `asyncio.Event`, set by commits on its shards (the
engine's watchers), by acks, by assignment changes and by shutdown; the only timed wait is for
the next ack deadline.
"""

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bridge.hstream.store.batches import received_record
from bridge.hstream.store.engine import Engine, Progress, StoredBatch, SubscriptionMeta

logger = logging.getLogger(__name__)

READ_AHEAD_BATCHES = 16


@dataclass(slots=True)
class Inflight:
    batch_size: int
    deadline: float


@dataclass(eq=False, slots=True)
class ConsumerSession:
    """One StreamingFetch call."""

    name: str
    uri: str
    user_agent: str
    shards: set[int] = field(default_factory=set)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    close_reason: str = ""

    def close(self, reason: str) -> None:
        self.close_reason = reason
        self.wake.set()

    def closed(self) -> bool:
        """A method, not a flag: it changes while a delivery loop awaits."""
        return bool(self.close_reason)


@dataclass(eq=False, slots=True)
class ShardCursor:
    shard_id: int
    progress: Progress
    sent_upto: int
    inflight: dict[int, Inflight] = field(default_factory=dict)
    owner: ConsumerSession | None = None

    def unacked_in(self, batch_id: int, batch_size: int) -> list[int]:
        acked = self.progress.partial.get(batch_id, set())
        if acked is None:
            return []
        return [i for i in range(batch_size) if i not in acked]


class SubscriptionRuntime:
    def __init__(self, meta: SubscriptionMeta, engine: Engine, shard_ids: Iterable[int]) -> None:
        self.meta = meta
        self.engine = engine
        saved = engine.progress.get(meta.sub_id, {})
        self.cursors: dict[int, ShardCursor] = {}
        for sid in shard_ids:
            progress = saved.get(sid) or Progress(0)
            self.cursors[sid] = ShardCursor(sid, progress, progress.acked_upto)
        self.consumers: list[ConsumerSession] = []
        self.unacked = 0

    # ------------------------------------------------------------------ membership

    def join(self, session: ConsumerSession) -> None:
        self.consumers.append(session)
        for cursor in self.cursors.values():
            if cursor.owner is None:
                self._give(cursor, self._least_loaded())
        while True:
            busiest = max(self.consumers, key=lambda c: len(c.shards))
            if len(busiest.shards) - len(session.shards) <= 1:
                break
            self._give(self.cursors[min(busiest.shards)], session)

    def leave(self, session: ConsumerSession) -> None:
        """Remove a consumer; its shards go to the consumers with the fewest shards."""
        if session not in self.consumers:
            return
        self.consumers.remove(session)
        for sid in sorted(session.shards):
            self.engine.unwatch(sid, session.wake)
            cursor = self.cursors[sid]
            cursor.owner = None
            if self.consumers:
                self._give(cursor, self._least_loaded())
        session.shards.clear()

    def close_all(self, reason: str) -> None:
        for session in list(self.consumers):
            session.close(reason)

    def _least_loaded(self) -> ConsumerSession:
        return min(self.consumers, key=lambda c: len(c.shards))

    def _give(self, cursor: ShardCursor, session: ConsumerSession) -> None:
        previous = cursor.owner
        if previous is not None:
            previous.shards.discard(cursor.shard_id)
            self.engine.unwatch(cursor.shard_id, previous.wake)
            previous.wake.set()
        cursor.owner = session
        session.shards.add(cursor.shard_id)
        self.engine.watch(cursor.shard_id, session.wake)
        for inflight in cursor.inflight.values():
            inflight.deadline = 0.0
        session.wake.set()

    # ------------------------------------------------------------------ acks

    def ack(self, record_ids: Iterable[Any]) -> None:
        touched: set[int] = set()
        for rid in record_ids:
            cursor = self.cursors.get(rid.shardId)
            if cursor is None:
                continue
            batch_id, index = rid.batchId, rid.batchIndex
            progress = cursor.progress
            if batch_id <= progress.acked_upto:
                continue
            acked = progress.partial.setdefault(batch_id, set())
            if acked is None or index in acked:
                continue
            inflight = cursor.inflight.get(batch_id)
            if inflight is not None and index >= inflight.batch_size:
                continue
            acked.add(index)
            touched.add(rid.shardId)
            if inflight is not None:
                self.unacked -= 1
                if len(acked) >= inflight.batch_size:
                    progress.partial[batch_id] = None
                    del cursor.inflight[batch_id]
        for sid in touched:
            cursor = self.cursors[sid]
            self._advance(cursor)
            self.engine.save_progress(self.meta.sub_id, sid, cursor.progress)
        if touched:
            for session in self.consumers:
                session.wake.set()

    @staticmethod
    def _advance(cursor: ShardCursor) -> None:
        progress = cursor.progress
        floor = min(cursor.inflight) - 1 if cursor.inflight else cursor.sent_upto
        if floor > progress.acked_upto:
            progress.acked_upto = floor
            for batch_id in [b for b in progress.partial if b <= floor]:
                del progress.partial[batch_id]

    # ------------------------------------------------------------------ delivery

    async def deliver(
        self, session: ConsumerSession, send: Callable[[Any], Awaitable[None]]
    ) -> None:
        """Send batches to `session` until it is closed."""
        while not session.closed():
            session.wake.clear()
            next_deadline = math.inf
            for sid in sorted(session.shards):
                cursor = self.cursors[sid]
                deadline = await self._redeliver(session, cursor, send)
                next_deadline = min(next_deadline, deadline)
                await self._send_new(session, cursor, send)
                if session.closed():
                    return
            if session.wake.is_set():
                continue
            timeout = None if next_deadline == math.inf else next_deadline - time.monotonic()
            if timeout is not None and timeout <= 0:
                continue
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(session.wake.wait(), timeout)

    async def _redeliver(
        self,
        session: ConsumerSession,
        cursor: ShardCursor,
        send: Callable[[Any], Awaitable[None]],
    ) -> float:
        """Re-send the expired unacked batches; returns the next deadline of this shard."""
        next_deadline = math.inf
        now = time.monotonic()
        for batch_id in sorted(cursor.inflight):
            inflight = cursor.inflight.get(batch_id)
            if inflight is None:
                continue
            if inflight.deadline > now:
                next_deadline = min(next_deadline, inflight.deadline)
                continue
            batches = await self.engine.read(cursor.shard_id, batch_id - 1, 1, until=batch_id)
            if cursor.owner is not session or session.closed():
                return math.inf
            inflight = cursor.inflight.get(batch_id)
            if inflight is None:
                continue
            if not batches:  # trimmed meanwhile: nothing left to deliver
                self._drop(cursor, batch_id, inflight.batch_size)
                continue
            unacked = cursor.unacked_in(batch_id, inflight.batch_size)
            inflight.deadline = time.monotonic() + self.meta.ack_timeout
            next_deadline = min(next_deadline, inflight.deadline)
            await send(received_record(cursor.shard_id, batches[0], unacked))
        return next_deadline

    def _drop(self, cursor: ShardCursor, batch_id: int, batch_size: int) -> None:
        self.unacked -= len(cursor.unacked_in(batch_id, batch_size))
        del cursor.inflight[batch_id]
        cursor.progress.partial[batch_id] = None
        self._advance(cursor)
        self.engine.save_progress(self.meta.sub_id, cursor.shard_id, cursor.progress)

    async def _send_new(
        self,
        session: ConsumerSession,
        cursor: ShardCursor,
        send: Callable[[Any], Awaitable[None]],
    ) -> None:
        sid = cursor.shard_id
        while (
            self.unacked < self.meta.max_unacked
            and cursor.sent_upto < self.engine.tail(sid)
            and cursor.owner is session
            and not session.closed()
        ):
            start, tail = cursor.sent_upto, self.engine.tail(sid)
            batches = await self.engine.read(sid, start, READ_AHEAD_BATCHES)
            if cursor.owner is not session or cursor.sent_upto != start:
                return
            if not batches:  # ids up to the tail were trimmed or never committed
                cursor.sent_upto = tail
                self._advance(cursor)
                continue
            for batch in batches:
                if self.unacked >= self.meta.max_unacked or cursor.owner is not session:
                    return
                cursor.sent_upto = batch.batch_id
                response = self._track(cursor, batch)
                if response is not None:
                    await send(response)
                if session.closed():
                    return

    def _track(self, cursor: ShardCursor, batch: StoredBatch) -> Any:
        """Mark a batch as sent; the response to send, or None when it is already acked."""
        unacked = cursor.unacked_in(batch.batch_id, batch.batch_size)
        if not unacked:
            cursor.progress.partial[batch.batch_id] = None
            self._advance(cursor)
            return None
        cursor.inflight[batch.batch_id] = Inflight(
            batch.batch_size, time.monotonic() + self.meta.ack_timeout
        )
        self.unacked += len(unacked)
        return received_record(cursor.shard_id, batch, unacked)
