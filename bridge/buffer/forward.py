"""`Forwarder`: durable records from the disk buffer into the pipeline, in sequence order.

It reads what the buffer made durable, oldest first, and adds each record to the accumulator
(which batches per shard, so per-key order holds) with a position that reports back to the
buffer when the record is stored or dead-lettered. It hands records over only while the
accumulator's byte budget has room: memory stays bounded however large the backlog on disk is.
Stream lookup, creation and shard routing happen here, at forwarding time, so the buffer
accepts records while HStreamDB is down.
"""

import asyncio
import logging
import time

from bridge.accumulator import Accumulator, Item
from bridge.buffer.disk import DiskBuffer

logger = logging.getLogger(__name__)

READ_BYTES = 1 << 20


class _Position:
    """One buffered record's place; `record_done` is called once it is stored."""

    __slots__ = ("_buffer", "_seq")

    def __init__(self, buffer: DiskBuffer, seq: int) -> None:
        self._buffer = buffer
        self._seq = seq

    def record_done(self) -> None:
        self._buffer.forwarded(self._seq)


class Forwarder:
    def __init__(self, buffer: DiskBuffer, accumulator: Accumulator) -> None:
        self._buffer = buffer
        self._accumulator = accumulator
        self._room = asyncio.Event()
        self._room.set()
        self.handed = buffer.committed_seq  # the last record given to the pipeline
        self.lost = 0  # records skipped because they could not be read (corruption)

    def on_pressure(self, full: bool) -> None:
        """The accumulator's budget: stop handing records over while it is spent."""
        if full:
            self._room.clear()
        else:
            self._room.set()

    async def run(self) -> None:
        buffer = self._buffer
        while True:
            await self._room.wait()
            await buffer.wait_durable(self.handed)
            records = await buffer.read(self.handed, READ_BYTES)
            if not records:
                # What is left is unreadable (a corrupt end, reported): records written after
                # it will show the gap, which is then skipped. Never spin meanwhile.
                await buffer.wait_durable(buffer.durable_seq)
                continue
            now, wall = time.monotonic(), time.time()
            add = self._accumulator.add
            for record in records:
                if record.seq != self.handed + 1:
                    self._lose(record.seq - 1)
                age = max(0.0, wall - record.written_ms / 1000)
                item = Item(
                    record.data,
                    record.key,
                    _Position(buffer, record.seq),
                    now - age,
                    record.rule_id,
                )
                add(record.stream, item)
                self.handed = record.seq

    def _lose(self, up_to: int) -> None:
        """Records handed..up_to could not be read: count them as gone so the ledger moves on."""
        missing = up_to - self.handed
        if missing <= 0:
            return
        logger.error(
            "disk buffer: %d records (seq %d to %d) could not be read and are lost: %s",
            missing,
            self.handed + 1,
            up_to,
            "; ".join(self._buffer.corrupt[-3:]) or "unreadable",
        )
        self.lost += missing
        for seq in range(self.handed + 1, up_to + 1):
            self._buffer.forwarded(seq)
        self.handed = up_to
