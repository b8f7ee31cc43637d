"""Shard readers: CreateShardReader -> LookupShardReader -> ReadShard... -> DeleteShardReader.

    async with client.read_shard("temps", shard_id, offset="earliest") as reader:
        async for record in reader:
            print(record.id, record.payload)

Without `follow`, a reader stops at the shard's tail as `GetTailRecordId` gave it when the reader
opened (records appended later are not read; the tail id names the last batch, and reads return
whole batches). With `follow` it keeps reading like `tail -f`,
asking again every `poll_interval` when the shard has nothing new. `async with` makes sure the
server-side reader is deleted when you stop early.
"""

import asyncio
import collections
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Self

from bridge.hstream import errors
from bridge.hstream._api import pb
from bridge.hstream._transport import Transport
from bridge.hstream.info import ShardInfo, server_node, special_offset_value
from bridge.hstream.records import ReceivedRecord, RecordId, decode_received

logger = logging.getLogger(__name__)

Offset = Literal["earliest", "latest"] | RecordId
"""Where a reader starts: the first record, after the last one, or at a record id."""

CallAny = Callable[[str, Any], Awaitable[Any]]

FIRST_BATCH = 1
"""The lowest batch id (LogDevice's LSN_OLDEST); 0 is the tail of a shard never written."""

ReadFrom = Callable[[int, int | None], Awaitable[tuple[list[ReceivedRecord], bool]]]
"""`read(start, limit)`: the records of the batches from id `start` up to a fixed tail, in
order, at most `limit` of them (None: all), and whether that was all of them."""


def _shard_offset(offset: Offset) -> Any:
    if isinstance(offset, RecordId):
        record = pb.RecordId(
            shardId=offset.shard_id, batchId=offset.batch_id, batchIndex=offset.batch_index
        )
        return pb.ShardOffset(recordOffset=record)
    return pb.ShardOffset(specialOffset=special_offset_value(offset))


class ShardReader:
    """Async iterator of the records of one shard, in order."""

    def __init__(
        self,
        transport: Transport,
        call_any: CallAny,
        stream: str,
        shard_id: int,
        *,
        offset: Offset = "earliest",
        follow: bool = False,
        limit: int | None = None,
        max_records: int = 1000,
        poll_interval: float = 0.2,
    ) -> None:
        if max_records < 1:
            raise ValueError("max_records must be at least 1")
        self._transport = transport
        self._call_any = call_any
        self.stream = stream
        self.shard_id = shard_id
        self._offset = offset
        self._follow = follow
        self._limit = limit
        self._max_records = max_records
        self._poll_interval = poll_interval
        self.reader_id = f"reader_{uuid.uuid4().hex}"
        self._target: str | None = None
        self._tail_batch: int | None = None
        self._buffer: collections.deque[ReceivedRecord] = collections.deque()
        self._count = 0
        self._opened = False
        self._done = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        if self._limit is not None and self._limit <= 0:
            self._done = True
            return
        if not self._follow:
            if self._offset == "latest":
                self._done = True  # nothing is after the tail yet
                return
            request = pb.GetTailRecordIdRequest(streamName=self.stream, shardId=self.shard_id)
            tail = (await self._call_any("GetTailRecordId", request)).tailRecordId
            self._tail_batch = tail.batchId
        create = pb.CreateShardReaderRequest(
            streamName=self.stream,
            shardId=self.shard_id,
            shardOffset=_shard_offset(self._offset),
            readerId=self.reader_id,
            # Following, the server may wait for records before it answers an empty read;
            # reading to the tail, an empty read must come back at once.
            timeout=int(self._poll_interval * 1000) if self._follow else 0,
        )
        await self._call_any("CreateShardReader", create)
        lookup = pb.LookupShardReaderRequest(readerId=self.reader_id)
        response = await self._call_any("LookupShardReader", lookup)
        self._target = server_node(response.serverNode).target

    async def close(self) -> None:
        """Delete the server-side reader (best effort: the server expires it anyway)."""
        self._done = True
        target, self._target = self._target, None
        if target is None:
            return
        request = pb.DeleteShardReaderRequest(readerId=self.reader_id)
        try:
            await self._transport.call(target, "DeleteShardReader", request)
        except errors.HStreamError as exc:
            logger.debug("deleting shard reader %s: %s", self.reader_id, exc)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ReceivedRecord:
        if not self._opened:
            await self.open()
        while not self._buffer:
            if self._done:
                await self.close()
                raise StopAsyncIteration
            await self._read()
        record = self._buffer.popleft()
        self._count += 1
        if self._limit is not None and self._count >= self._limit:
            self._buffer.clear()
            self._done = True
        return record

    async def _read(self) -> None:
        assert self._target is not None
        wanted = self._max_records
        if self._limit is not None:
            wanted = min(wanted, self._limit - self._count)
        request = pb.ReadShardRequest(readerId=self.reader_id, maxRecords=wanted)
        started = time.monotonic()
        response = await self._transport.call(self._target, "ReadShard", request)
        records = [
            record
            for received in response.receivedRecords
            for record in decode_received(received.recordIds, received.record)
        ]
        if self._tail_batch is not None:
            # A read returns whole batches, so the tail batch arrives complete.
            tail = self._tail_batch
            kept = [r for r in records if r.id.batch_id <= tail]
            if not records or len(kept) < len(records) or records[-1].id.batch_id >= tail:
                self._done = True
            records = kept
        elif not records:
            # The server waits up to the reader's timeout for new records; if it answered at
            # once anyway, wait here so that following an idle shard does not spin.
            idle = self._poll_interval - (time.monotonic() - started)
            if idle > 0:
                await asyncio.sleep(idle)
        self._buffer.extend(records)


class StreamReader:
    """Async iterator of the records of every shard of a stream, read concurrently."""

    def __init__(
        self,
        list_shards: Callable[[str], Awaitable[list[ShardInfo]]],
        stream: str,
        open_shard: Callable[[int, int | None], ShardReader],
        *,
        limit: int | None = None,
    ) -> None:
        self._list_shards = list_shards
        self.stream = stream
        self._open_shard = open_shard
        self._limit = limit
        self._queue: asyncio.Queue[ReceivedRecord | BaseException | None] = asyncio.Queue(1000)
        self._tasks: list[asyncio.Task[None]] = []
        self._readers: list[ShardReader] = []
        self._running = 0
        self._count = 0
        self._opened = False

    async def __aenter__(self) -> Self:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        if self._opened:
            return
        self._opened = True
        shards = await self._list_shards(self.stream)
        self._readers = [self._open_shard(s.shard_id, self._limit) for s in shards]
        for reader in self._readers:
            name = f"read {self.stream}/{reader.shard_id}"
            self._tasks.append(asyncio.create_task(self._pump(reader), name=name))
        self._running = len(self._tasks)

    async def _pump(self, reader: ShardReader) -> None:
        try:
            async with reader:
                async for record in reader:
                    await self._queue.put(record)
        except Exception as exc:  # handed to the iterating task, which raises it
            await self._queue.put(exc)
        else:
            await self._queue.put(None)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []
        self._running = 0
        for reader in self._readers:
            await reader.close()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> ReceivedRecord:
        if not self._opened:
            await self.open()
        while self._running and (self._limit is None or self._count < self._limit):
            item = await self._queue.get()
            if item is None:
                self._running -= 1
                continue
            if isinstance(item, BaseException):
                await self.close()
                raise item
            self._count += 1
            return item
        await self.close()
        raise StopAsyncIteration


async def last_records(tail: int, read: ReadFrom, count: int) -> list[ReceivedRecord]:
    """The last `count` records of a shard whose last batch id is `tail`, oldest first.

    Batch ids grow but need not be dense (HStreamDB's are LogDevice LSNs, and an epoch change
    jumps by 2**32), and a batch holds any number of records, so no arithmetic on ids says where
    the last `count` records begin. So: gallop back from the tail (starts `tail + 1 - count`,
    then twice, four times... as far back) until at least `count` records lie between the start
    and the tail, then bisect between that start and the one before it for the latest start
    that still leaves `count`. Each probe reads at most `2 * count` records (`read` stops
    there), and a probe that read everything from its start to the tail and found `count`
    answers at once: with one record per batch (dense ids), that is the first probe. The last
    read holds fewer than `count` records plus one batch. Whatever the shard holds, that is at
    most about 2 x 64 probes on 64-bit ids; typically one to a few.
    """
    if count <= 0 or tail < FIRST_BATCH:
        return []
    probe = 2 * count
    short = tail + 1  # from here, fewer than `count` records remain (none: past the tail)
    step = count  # `count` batches hold at least `count` records
    while True:
        start = max(FIRST_BATCH, tail + 1 - step)
        records, complete = await read(start, probe)
        if complete and (len(records) >= count or start == FIRST_BATCH):
            return records[-count:]
        if len(records) >= count:
            break
        short, step = start, step * 2
    enough = start  # from here, at least `count` records remain
    while short - enough > 1:
        middle = (enough + short) // 2
        records, complete = await read(middle, probe)
        if complete and len(records) >= count:
            return records[-count:]
        if len(records) >= count:
            enough = middle
        else:
            short = middle
    records, _ = await read(enough, None)
    return records[-count:]
