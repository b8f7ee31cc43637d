"""`DiskBuffer`: records made durable on local disk before their MQTT message is acknowledged.

Intake calls `add(entries)` synchronously, in arrival order; each entry gets the next sequence
number and the call returns a future that resolves once the entries are written and fsync'd
(group commit: while one fsync runs, the next entries gather, and one write and one fsync
serve them all). Only then may the message be acknowledged.

The `Forwarder` (bridge/buffer/forward.py) reads durable records in sequence order and hands them
to the pipeline; `forwarded(seq)` reports each one stored (in its stream or as a dead letter).
The ledger moves over the contiguous prefix of forwarded records, at most every
`ledger_interval` seconds, and segments wholly below it are deleted. So after a crash what repeats
is at most what was forwarded but not yet in the ledger.

Pressure: when the segments and pending writes reach `limit_bytes`, or a write fails because the
disk is full (ENOSPC, or any OSError: the write is cut back and retried, never acknowledged),
`on_pressure(True)` pauses intake; `on_pressure(False)` when there is room again.
"""

import asyncio
import contextlib
import errno
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bridge.backoff import backoff_delay
from bridge.buffer import log
from bridge.buffer.log import Bufferable, Stored

logger = logging.getLogger(__name__)

SEGMENT_BYTES = 64 << 20
READ_BYTES = 4 << 20
TAIL_BYTES = 16 << 20
LEDGER_INTERVAL = 0.1
RESUME_BELOW = 0.9  # of the limit


@dataclass
class _Segment:
    first_seq: int
    path: Path
    size: int  # durable bytes
    last_seq: int  # 0 while empty


class DiskBuffer:
    """Not thread-safe: one event loop owns it (file writes run in a worker thread)."""

    def __init__(
        self,
        directory: Path,
        *,
        limit_bytes: int,
        on_pressure: Callable[[bool], None] | None = None,
        segment_bytes: int = SEGMENT_BYTES,
        ledger_interval: float = LEDGER_INTERVAL,
    ) -> None:
        self.directory = Path(directory)
        self.limit_bytes = limit_bytes
        self.segment_bytes = max(1024, min(segment_bytes, limit_bytes // 16 or 1024))
        self.ledger_interval = ledger_interval
        self.on_pressure = on_pressure
        self._segments: deque[_Segment] = deque()
        self._fd: int | None = None  # the newest segment, open for appending
        self._disk_bytes = 0  # the sizes of _segments, kept as they change (add() reads it)
        self._writing = False  # a worker thread is writing to _fd
        self._next_seq = 1
        self.durable_seq = 0
        self.committed_seq = 0  # in the ledger
        self._forwarded_to = 0  # contiguous prefix forwarded (ledger catches up with it)
        self._done: set[int] = set()
        self._pending: list[bytes] = []
        self._pending_stored: list[Stored] = []  # the same records, for the in-memory tail
        self._pending_first = 0  # seq of _pending[0]
        # Durable records the forwarder has not taken yet, kept in memory (up to TAIL_BYTES)
        # so that a forwarder that keeps up never reads them back from disk.
        self._tail: deque[Stored] = deque()
        self._tail_bytes = 0
        self._pending_futures: list[asyncio.Future[None]] = []
        self._group: asyncio.Future[None] | None = None  # the future of what is pending
        self._pending_bytes = 0
        self._writer: asyncio.Task[None] | None = None
        self._ledger_task: asyncio.Task[None] | None = None
        # Ledger writes run in threads; a cancelled one still finishes, so writes are
        # serialised and never move the ledger back.
        self._ledger_lock = threading.Lock()
        self._ledger_written = 0
        self._durable = asyncio.Event()
        self._times: deque[tuple[int, int]] = deque()  # (last seq of a write, its time in ms)
        self._cursor: tuple[Path | None, int, int] = (None, 0, 0)  # where the last read ended
        self._closing = False
        self.full = False  # limit reached or the disk is full
        self.disk_error: str | None = None
        self.corrupt: list[str] = []
        self.truncated = 0
        self.written_total = 0
        self.forwarded_total = 0
        self.fsyncs_total = 0

    # --- stats (DiskBufferStats) ----------------------------------------------------------------

    @property
    def bytes_on_disk(self) -> int:
        return self._disk_bytes

    @property
    def backlog_records(self) -> int:
        return self.durable_seq - self._forwarded_to

    @property
    def backlog_bytes(self) -> int:
        return sum(s.size for s in self._segments if s.last_seq > self._forwarded_to)

    @property
    def accepting(self) -> bool:
        return not self.full and not self._closing

    def oldest_age(self) -> float | None:
        for last_seq, written_ms in self._times:
            if last_seq > self._forwarded_to:
                return max(0.0, time.time() - written_ms / 1000)
        return None

    # --- lifecycle --------------------------------------------------------------------------

    async def open(self) -> None:
        await asyncio.to_thread(self._open)
        logger.info(
            "disk buffer in %s: %d records to forward (%d bytes), limit %d bytes",
            self.directory,
            self.backlog_records,
            self.backlog_bytes,
            self.limit_bytes,
        )

    def _open(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        result = log.scan(self.directory)
        self.corrupt, self.truncated = result.corrupt, result.truncated
        committed = min(log.read_ledger(self.directory), result.last_seq)
        if result.segments:
            # Segments are deleted only once forwarded, possibly before the ledger said so.
            committed = max(committed, result.segments[0].first_seq - 1)
        self.committed_seq = self._forwarded_to = committed
        kept = {info.path for info in result.segments if info.last_seq > committed}
        for path in log.segments(self.directory):
            if path not in kept:
                path.unlink()  # forwarded, or holding no valid record
        for info in result.segments:
            if info.path in kept:
                self._segments.append(_Segment(info.first_seq, info.path, info.size, info.last_seq))
                self._disk_bytes += info.size
                self._times.append((info.last_seq, info.first_written_ms))
        self.durable_seq = result.last_seq
        self._next_seq = result.last_seq + 1
        log.sync_directory(self.directory)

    async def flush(self, timeout: float) -> bool:
        """Wait until everything added is durable; False after `timeout` seconds."""
        try:
            async with asyncio.timeout(timeout):
                while self._writer is not None and not self._writer.done():
                    await asyncio.shield(self._writer)
        except TimeoutError:
            return False
        return not self._pending

    async def aclose(self, timeout: float = 10.0) -> None:
        """Finish pending writes (their messages may then be acknowledged), write the ledger."""
        self._closing = True
        if self._writer is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._writer)
            if not self._writer.done():
                self._writer.cancel()
        if self._ledger_task is not None:
            self._ledger_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ledger_task
        if self._forwarded_to > self.committed_seq:
            await asyncio.to_thread(self._write_ledger, self._forwarded_to)
            self.committed_seq = self._forwarded_to
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # --- writing ----------------------------------------------------------------------------

    def add(self, entries: Sequence[Bufferable]) -> "asyncio.Future[None]":
        """Queue entries for the disk; the future resolves once they are durable (it is shared
        by every add that the same write takes)."""
        loop = asyncio.get_running_loop()
        if not entries:
            done: asyncio.Future[None] = loop.create_future()
            done.set_result(None)
            return done
        now_ms = int(time.time() * 1000)
        if not self._pending:
            self._pending_first = self._next_seq
            # One future for everything that the next write takes (group commit).
            self._group = loop.create_future()
            self._pending_futures.append(self._group)
        future = self._group
        assert future is not None
        for entry in entries:
            seq = self._next_seq
            blob = log.encode(seq, now_ms, entry)
            self._next_seq = seq + 1
            size = len(blob)
            self._pending.append(blob)
            self._pending_stored.append(
                Stored(seq, now_ms, entry.stream, entry.rule_id, entry.key, entry.data, size)
            )
            self._pending_bytes += size
        if not self.full and self.bytes_on_disk + self._pending_bytes >= self.limit_bytes:
            self._set_full(True, f"the disk buffer holds its limit of {self.limit_bytes} bytes")
        if self._writer is None or self._writer.done():
            self._writer = loop.create_task(self._write_loop(), name="disk-buffer-writer")
        return future

    def _set_full(self, full: bool, why: str = "") -> None:
        if full == self.full:
            return
        self.full = full
        if full:
            logger.warning("disk buffer full (%s): pausing intake", why)
        else:
            logger.info("disk buffer has room again: resuming intake")
        if self.on_pressure is not None:
            self.on_pressure(full)

    async def _write_loop(self) -> None:
        attempt = 0
        while self._pending:
            blobs, futures = self._pending, self._pending_futures
            stored = self._pending_stored
            first, size = self._pending_first, self._pending_bytes
            self._pending, self._pending_futures, self._pending_bytes = [], [], 0
            self._pending_stored = []
            self._pending_first = self._next_seq
            self._writing = True
            try:
                segment = await asyncio.to_thread(self._write, first, blobs, size)
            except OSError as exc:
                # Not written (cut back to where it was): keep the records, ahead of newer ones,
                # and try again; their messages stay unacknowledged meanwhile.
                self._pending = blobs + self._pending
                self._pending_stored = stored + self._pending_stored
                self._pending_futures = futures + self._pending_futures
                self._pending_bytes += size
                self._pending_first = first
                self.disk_error = (
                    f"{exc.strerror or exc} ({errno.errorcode.get(exc.errno or 0, '?')})"
                )
                self._set_full(True, f"writing failed: {self.disk_error}")
                self._writing = False
                await asyncio.sleep(backoff_delay(attempt, 0.1, 2.0))
                attempt += 1
                continue
            finally:
                self._writing = False
            attempt = 0
            self.disk_error = None
            last = first + len(blobs) - 1
            if segment is not None:
                self._segments.append(segment)
            current = self._segments[-1]
            current.size += size
            self._disk_bytes += size
            current.last_seq = last
            self._times.append((last, int(time.time() * 1000)))
            self.durable_seq = last
            self._tail.extend(stored)
            self._tail_bytes += size
            while self._tail_bytes > TAIL_BYTES and self._tail:
                self._tail_bytes -= self._tail.popleft().size  # read from disk when needed
            self.written_total += len(blobs)
            self.fsyncs_total += 1
            self._durable.set()
            for future in futures:
                if not future.done():
                    future.set_result(None)
            if self.full and self.bytes_on_disk + self._pending_bytes < self.limit_bytes * (
                RESUME_BELOW
            ):
                self._set_full(False)

    def _write(self, first: int, blobs: list[bytes], size: int) -> "_Segment | None":
        """In a worker thread: append and fsync (a new segment first when the current one is
        full); on failure, cut the file back to where it was and raise."""
        new: _Segment | None = None
        current = self._segments[-1] if self._segments else None
        if self._fd is None or current is None or current.size >= self.segment_bytes:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
            path = log.segment_path(self.directory, first)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                log.sync_directory(self.directory)
            except OSError:
                os.close(fd)
                raise
            self._fd = fd
            new = _Segment(first, path, 0, 0)
        fd = self._fd
        start = current.size if new is None and current is not None else 0
        try:
            view = memoryview(b"".join(blobs))
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, start)
                os.fsync(fd)
            if new is not None:
                os.close(fd)
                self._fd = None
                with contextlib.suppress(OSError):
                    new.path.unlink()
            raise
        return new

    # --- reading and forwarding -------------------------------------------------------------

    async def wait_durable(self, after_seq: int) -> None:
        """Return once a record after `after_seq` is durable."""
        while self.durable_seq <= after_seq:
            self._durable.clear()
            await self._durable.wait()

    async def read(self, after_seq: int, max_bytes: int = READ_BYTES) -> list[Stored]:
        """Durable records after `after_seq`, in order, about `max_bytes` at most. Sequence
        numbers missing from the result's run were lost to corruption (see `corrupt`)."""
        tail = self._tail
        while tail and tail[0].seq <= after_seq:
            self._tail_bytes -= tail.popleft().size
        if tail and tail[0].seq == after_seq + 1:
            out: list[Stored] = []
            total = 0
            while tail and total < max_bytes:
                record = tail.popleft()
                total += record.size
                out.append(record)
            self._tail_bytes -= total
            return out
        durable = self.durable_seq
        for segment in list(self._segments):
            if segment.last_seq <= after_seq:
                continue
            path, offset, seq = self._cursor
            start = offset if path == segment.path and seq == after_seq else 0
            while start < segment.size:
                # Without a cursor (after a restart, or when the in-memory tail overflowed) the
                # segment is scanned from its start, window by window, to `after_seq`.
                records, end, notes = await asyncio.to_thread(
                    log.read_from, segment.path, start, segment.size, after_seq, durable, max_bytes
                )
                for note in notes:
                    if note not in self.corrupt:
                        self.corrupt.append(note)
                        logger.error("disk buffer: corrupt records in %s", note)
                if records:
                    self._cursor = (segment.path, end, records[-1].seq)
                    return records
                if end <= start:
                    return []  # nothing more is durable in this segment yet
                start = end
            after_seq = max(after_seq, segment.last_seq)  # nothing readable left in it
        return []

    def forwarded(self, seq: int) -> None:
        """The record `seq` is stored (in its stream or as a dead letter)."""
        self.forwarded_total += 1
        if seq != self._forwarded_to + 1:
            self._done.add(seq)
            return
        self._forwarded_to = seq
        done = self._done
        while self._forwarded_to + 1 in done:
            self._forwarded_to += 1
            done.discard(self._forwarded_to)
        if self._ledger_task is None or self._ledger_task.done():
            self._ledger_task = asyncio.get_running_loop().create_task(
                self._commit(), name="disk-buffer-ledger"
            )

    def _write_ledger(self, seq: int) -> None:
        """Write the ledger (in a thread), one write at a time, never below what was written."""
        with self._ledger_lock:
            if seq <= self._ledger_written:
                return
            log.write_ledger(self.directory, seq)
            self._ledger_written = seq

    async def _commit(self) -> None:
        """Delete forwarded segments and write the ledger (at most every `ledger_interval`).

        Segments go first: their records are stored, so losing the ledger update in a crash
        costs nothing (a restart starts at the first segment left), and on a full disk that is
        what makes room, for the ledger too. A failed ledger write is retried.
        """
        attempt = 0
        while True:
            await asyncio.sleep(
                self.ledger_interval if attempt == 0 else backoff_delay(attempt, 0.1, 2.0)
            )
            seq = self._forwarded_to
            if seq <= self.committed_seq:
                return
            while self._times and self._times[0][0] <= seq:
                self._times.popleft()
            await self._delete_forwarded(seq)
            try:
                await asyncio.to_thread(self._write_ledger, seq)
            except OSError as exc:
                logger.warning("disk buffer: writing the ledger failed (%s); retrying", exc)
                attempt += 1
                continue
            self.committed_seq = seq
            if (
                self.full
                and not self.disk_error
                and self.bytes_on_disk < self.limit_bytes * RESUME_BELOW
            ):
                self._set_full(False)
            return

    async def _delete_forwarded(self, seq: int) -> None:
        gone = []
        while len(self._segments) > 1 and self._segments[0].last_seq <= seq:
            gone.append(self._drop_oldest())
        if (
            len(self._segments) == 1
            and self._segments[0].last_seq <= seq
            and not self._writing
            and self._fd is not None
        ):
            # All forwarded, the newest segment too: remove it (the next write starts another),
            # which is what frees a full disk.
            os.close(self._fd)
            self._fd = None
            gone.append(self._drop_oldest())
        if gone:
            await asyncio.to_thread(_unlink, gone)

    def _drop_oldest(self) -> Path:
        segment = self._segments.popleft()
        self._disk_bytes -= segment.size
        return segment.path


def _unlink(paths: list[Path]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
