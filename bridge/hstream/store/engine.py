"""Durable storage for the embedded store: SQLite in WAL mode, one writer with group commit.

Fsync policy
------------
The database runs with `journal_mode=WAL` and `synchronous=FULL`: every COMMIT fsyncs the WAL
before it returns, so a batch whose append is acknowledged survives a process kill and a power
loss. Appends are not committed one by one. A single writer task drains every append waiting
when it wakes, writes them in ONE transaction (one fsync for all of them), and only then resolves
their futures. While that commit runs on the writer thread, new appends queue up and go into the
next transaction: under concurrent load the cost of an fsync is shared by many batches, and a
lone append costs one fsync. Subscription progress (acks) rides along in the same transactions.
Metadata changes (streams, shards, subscriptions, trims) commit in their own transaction.
WAL checkpoints run automatically (SQLite's default of 1000 pages) on the writer thread.

All SQLite calls run on two dedicated threads, one writer connection and one reader connection,
so the event loop never blocks on disk. WAL lets the reader see every committed batch while the
writer works.

Layout
------
A batch is stored as one row, the `BatchedRecord` payload exactly as the client sent it (never
decoded here), with its compression type, record count and publish time in ms. Its key is
`shard_id << 40 | batch_id`: one B-tree, no secondary index, and a shard's batches are one key
range. Batch ids (HStreamDB's LSNs) start at 1 per shard and only grow; a shard remembers how far
it was trimmed, so a trimmed-empty shard never reuses a batch id after a restart. Shard ids come
from an AUTOINCREMENT column: unique store-wide and never reused, also after a stream is deleted
and created again.
"""

import asyncio
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")

DB_FILE = "store.sqlite3"
BATCH_BITS = 40
MAX_BATCH_ID = (1 << BATCH_BITS) - 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS streams (
    name TEXT PRIMARY KEY,
    replication INTEGER NOT NULL,
    backlog INTEGER NOT NULL,
    shard_count INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS shards (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    stream TEXT NOT NULL,
    start_key TEXT NOT NULL,
    end_key TEXT NOT NULL,
    epoch INTEGER NOT NULL,
    active INTEGER NOT NULL,
    trimmed_upto INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS records (
    pos INTEGER PRIMARY KEY,
    compression INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    publish_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS subscriptions (
    id TEXT PRIMARY KEY,
    stream TEXT NOT NULL,
    ack_timeout INTEGER NOT NULL,
    max_unacked INTEGER NOT NULL,
    start_offset INTEGER NOT NULL,
    created_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS subscription_progress (
    subscription TEXT NOT NULL,
    shard_id INTEGER NOT NULL,
    acked_upto INTEGER NOT NULL,
    partial TEXT NOT NULL,
    PRIMARY KEY (subscription, shard_id)
);
"""


def position(shard_id: int, batch_id: int) -> int:
    """The `records` key of a batch."""
    return (shard_id << BATCH_BITS) | batch_id


@dataclass(frozen=True, slots=True)
class StreamMeta:
    name: str
    replication: int
    backlog: int
    shard_count: int
    created_ms: int


@dataclass(frozen=True, slots=True)
class ShardMeta:
    shard_id: int
    stream: str
    start: int
    end: int
    epoch: int
    active: bool


@dataclass(frozen=True, slots=True)
class SubscriptionMeta:
    sub_id: str
    stream: str
    ack_timeout: int
    max_unacked: int
    offset: int
    created_ms: int


@dataclass(frozen=True, slots=True)
class StoredBatch:
    batch_id: int
    compression: int
    batch_size: int
    publish_ms: int
    payload: bytes


@dataclass(slots=True)
class Progress:
    """What a subscription has acked on one shard.

    Every batch up to `acked_upto` is done; beyond it, `partial` maps a batch id to the acked
    record indexes, or to None when the whole batch is acked.
    """

    acked_upto: int
    partial: dict[int, set[int] | None] = field(default_factory=dict)

    def to_json(self) -> str:
        return json.dumps(
            {str(b): (None if s is None else sorted(s)) for b, s in self.partial.items()}
        )

    @classmethod
    def from_row(cls, acked_upto: int, text: str) -> "Progress":
        raw: dict[str, list[int] | None] = json.loads(text) if text else {}
        return cls(acked_upto, {int(b): (None if s is None else set(s)) for b, s in raw.items()})


class StoreClosed(RuntimeError):
    """The engine was closed while an operation waited."""


_Row = tuple[int, int, int, int, bytes]
_Op = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]"]


P = ParamSpec("P")
R = TypeVar("R")


def _completes(method: Callable[P, Coroutine[Any, Any, R]]) -> Callable[P, Coroutine[Any, Any, R]]:
    """A metadata change runs to its end even when its caller is cancelled (a client that goes
    away mid-call): the commit and the in-memory state after it must not part ways (a stream
    committed but unknown in memory could never be created or found again)."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        task = asyncio.ensure_future(method(*args, **kwargs))
        _RUNNING.add(task)
        task.add_done_callback(_RUNNING.discard)
        return await asyncio.shield(task)

    return wrapper


_RUNNING: set["asyncio.Future[Any]"] = set()


class Engine:
    """The store's durable state, with an in-memory copy of all metadata.

    Metadata (`streams`, `shards`, `subscriptions`, `progress`) is read from memory; every change
    is written to SQLite first and applied to memory after the commit.
    """

    def __init__(self, data_dir: Path) -> None:
        self._path = data_dir / DB_FILE
        self._data_dir = data_dir
        self.streams: dict[str, StreamMeta] = {}
        self.shards: dict[int, ShardMeta] = {}
        self.subscriptions: dict[str, SubscriptionMeta] = {}
        self.progress: dict[str, dict[int, Progress]] = {}
        self._tails: dict[int, int] = {}
        self._next_batch: dict[int, int] = {}
        self._watchers: dict[int, set[asyncio.Event]] = {}
        self._writer_thread = ThreadPoolExecutor(1, thread_name_prefix="store-writer")
        self._reader_thread = ThreadPoolExecutor(1, thread_name_prefix="store-reader")
        self._wconn: sqlite3.Connection | None = None
        self._rconn: sqlite3.Connection | None = None
        self._pending_rows: list[_Row] = []
        self._pending_acks: list[tuple[asyncio.Future[int], int, int]] = []
        self._pending_ops: list[_Op] = []
        self._pending_progress: dict[tuple[str, int], tuple[int, str]] = {}
        self._wake = asyncio.Event()
        self._writer_task: asyncio.Task[None] | None = None
        self._closed = False
        self.commits = 0
        """Data transactions committed so far (a group commit counts once)."""

    # ------------------------------------------------------------------ lifecycle

    async def open(self) -> None:
        self._data_dir.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        self._wconn = await loop.run_in_executor(self._writer_thread, self._connect, True)
        self._rconn = await loop.run_in_executor(self._reader_thread, self._connect, False)
        await loop.run_in_executor(self._writer_thread, self._load)
        self._writer_task = asyncio.create_task(self._write_loop(), name="store-writer")

    async def close(self) -> None:
        """Commit what is queued, then close both connections."""
        if self._closed:
            return
        self._closed = True
        self._wake.set()
        if self._writer_task is not None:
            await self._writer_task
        loop = asyncio.get_running_loop()
        if self._wconn is not None:
            await loop.run_in_executor(self._writer_thread, self._wconn.close)
        if self._rconn is not None:
            await loop.run_in_executor(self._reader_thread, self._rconn.close)
        self._writer_thread.shutdown(wait=True)
        self._reader_thread.shutdown(wait=True)
        for event_set in self._watchers.values():
            for event in event_set:
                event.set()

    def _connect(self, writer: bool) -> sqlite3.Connection:
        conn = sqlite3.connect(self._path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=FULL")
        if writer:
            conn.executescript(_SCHEMA)
        return conn

    def _load(self) -> None:
        conn = self._wconn
        assert conn is not None
        for row in conn.execute(
            "SELECT name, replication, backlog, shard_count, created_ms FROM streams"
        ):
            self.streams[row[0]] = StreamMeta(*row)
        for sid, stream, start, end, epoch, active, trimmed in conn.execute(
            "SELECT id, stream, start_key, end_key, epoch, active, trimmed_upto FROM shards"
        ):
            self.shards[sid] = ShardMeta(sid, stream, int(start), int(end), epoch, bool(active))
            (last,) = conn.execute(
                "SELECT MAX(pos) FROM records WHERE pos BETWEEN ? AND ?",
                (position(sid, 0), position(sid, MAX_BATCH_ID)),
            ).fetchone()
            tail = max(trimmed, (last - position(sid, 0)) if last is not None else 0)
            self._tails[sid] = tail
            self._next_batch[sid] = tail + 1
        for row in conn.execute(
            "SELECT id, stream, ack_timeout, max_unacked, start_offset, created_ms"
            " FROM subscriptions"
        ):
            self.subscriptions[row[0]] = SubscriptionMeta(*row)
            self.progress[row[0]] = {}
        for sub, shard_id, acked_upto, partial in conn.execute(
            "SELECT subscription, shard_id, acked_upto, partial FROM subscription_progress"
        ):
            if sub in self.progress:
                self.progress[sub][shard_id] = Progress.from_row(acked_upto, partial)

    # ------------------------------------------------------------------ appends

    def tail(self, shard_id: int) -> int:
        """The id of the last committed batch of a shard (0 when none was ever written)."""
        return self._tails.get(shard_id, 0)

    async def append(
        self, shard_id: int, compression: int, batch_size: int, payload: bytes
    ) -> tuple[int, int]:
        """Store one batch; returns `(batch_id, publish_ms)` once it is committed to disk."""
        if self._closed:
            raise StoreClosed("the store is closing")
        batch_id = self._next_batch[shard_id]
        self._next_batch[shard_id] = batch_id + 1
        publish_ms = time.time_ns() // 1_000_000
        future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._pending_rows.append(
            (position(shard_id, batch_id), compression, batch_size, publish_ms, payload)
        )
        self._pending_acks.append((future, shard_id, batch_id))
        self._wake.set()
        await future
        return batch_id, publish_ms

    def save_progress(self, sub_id: str, shard_id: int, progress: Progress) -> None:
        """Queue a subscription's progress on a shard for the next commit (not awaited)."""
        if sub_id not in self.subscriptions:
            return
        self._pending_progress[(sub_id, shard_id)] = (progress.acked_upto, progress.to_json())
        self._wake.set()

    async def _run_op(self, op: Callable[[sqlite3.Connection], T]) -> T:
        if self._closed:
            raise StoreClosed("the store is closing")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending_ops.append((op, future))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            rows, acks = self._pending_rows, self._pending_acks
            ops, progress = self._pending_ops, self._pending_progress
            self._pending_rows, self._pending_acks = [], []
            self._pending_ops, self._pending_progress = [], {}
            if rows or ops or progress:
                await self._commit(loop, rows, acks, ops, progress)
            if self._closed and not (self._pending_rows or self._pending_ops):
                if self._pending_progress:
                    continue
                return

    async def _commit(
        self,
        loop: asyncio.AbstractEventLoop,
        rows: list[_Row],
        acks: list[tuple[asyncio.Future[int], int, int]],
        ops: list[_Op],
        progress: dict[tuple[str, int], tuple[int, str]],
    ) -> None:
        try:
            results = await loop.run_in_executor(
                self._writer_thread, self._write, rows, progress, [op for op, _ in ops]
            )
        except Exception as exc:  # the data transaction failed: nothing in it is stored
            logger.exception("store commit of %d batches failed", len(rows))
            for future, _, _ in acks:
                if not future.done():
                    future.set_exception(exc)
            for _, op_future in ops:
                if not op_future.done():
                    op_future.set_exception(exc)
            return
        if rows or progress:
            self.commits += 1
        touched: set[int] = set()
        for future, shard_id, batch_id in acks:
            if batch_id > self._tails.get(shard_id, 0):
                self._tails[shard_id] = batch_id
            touched.add(shard_id)
            if not future.done():
                future.set_result(batch_id)
        for (_, op_future), (ok, value) in zip(ops, results, strict=True):
            if op_future.done():
                continue
            if ok:
                op_future.set_result(value)
            else:
                op_future.set_exception(value)
        for shard_id in touched:
            self._notify(shard_id)

    def _write(
        self,
        rows: list[_Row],
        progress: dict[tuple[str, int], tuple[int, str]],
        ops: list[Callable[[sqlite3.Connection], Any]],
    ) -> list[tuple[bool, Any]]:
        conn = self._wconn
        assert conn is not None
        if rows or progress:
            conn.execute("BEGIN")
            try:
                if rows:
                    conn.executemany("INSERT INTO records VALUES (?, ?, ?, ?, ?)", rows)
                if progress:
                    conn.executemany(
                        "INSERT OR REPLACE INTO subscription_progress VALUES (?, ?, ?, ?)",
                        [(s, sh, up, js) for (s, sh), (up, js) in progress.items()],
                    )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        results: list[tuple[bool, Any]] = []
        for op in ops:
            conn.execute("BEGIN")
            try:
                value = op(conn)
                conn.execute("COMMIT")
            except Exception as exc:
                conn.execute("ROLLBACK")
                results.append((False, exc))
            else:
                results.append((True, value))
        return results

    # ------------------------------------------------------------------ notifications

    def watch(self, shard_id: int, event: asyncio.Event) -> None:
        """Set `event` whenever a batch of `shard_id` is committed (until `unwatch`)."""
        self._watchers.setdefault(shard_id, set()).add(event)

    def unwatch(self, shard_id: int, event: asyncio.Event) -> None:
        watchers = self._watchers.get(shard_id)
        if watchers is not None:
            watchers.discard(event)
            if not watchers:
                del self._watchers[shard_id]

    def _notify(self, shard_id: int) -> None:
        for event in self._watchers.get(shard_id, ()):
            event.set()

    # ------------------------------------------------------------------ reads

    async def read(
        self, shard_id: int, after: int, max_batches: int, until: int | None = None
    ) -> list[StoredBatch]:
        """Committed batches of a shard with ids in `(after, until]`, oldest first."""
        upper = self.tail(shard_id) if until is None else min(until, self.tail(shard_id))
        if upper <= after:
            return []
        lo, hi = position(shard_id, after + 1), position(shard_id, upper)
        base = position(shard_id, 0)

        def query() -> list[StoredBatch]:
            assert self._rconn is not None
            cursor = self._rconn.execute(
                "SELECT pos, compression, batch_size, publish_ms, payload FROM records"
                " WHERE pos BETWEEN ? AND ? ORDER BY pos LIMIT ?",
                (lo, hi, max_batches),
            )
            return [StoredBatch(p - base, c, n, t, d) for p, c, n, t, d in cursor]

        return await self._read(query)

    async def first_batch_at(self, shard_id: int, publish_ms: int) -> int:
        """The id of the first batch published at or after `publish_ms` (tail + 1 when none)."""
        lo, hi = position(shard_id, 0), position(shard_id, MAX_BATCH_ID)

        def query() -> int:
            assert self._rconn is not None
            row = self._rconn.execute(
                "SELECT pos FROM records WHERE pos BETWEEN ? AND ? AND publish_ms >= ?"
                " ORDER BY pos LIMIT 1",
                (lo, hi, publish_ms),
            ).fetchone()
            return int(row[0]) - lo if row is not None else -1

        found = await self._read(query)
        return found if found >= 0 else self.tail(shard_id) + 1

    async def _read(self, query: Callable[[], T]) -> T:
        if self._closed:
            raise StoreClosed("the store is closing")
        return await asyncio.get_running_loop().run_in_executor(self._reader_thread, query)

    # ------------------------------------------------------------------ metadata

    @_completes
    async def create_stream(
        self, meta: StreamMeta, ranges: Iterable[tuple[int, int]]
    ) -> list[ShardMeta]:
        ranges = list(ranges)

        def op(conn: sqlite3.Connection) -> list[int]:
            conn.execute(
                "INSERT INTO streams VALUES (?, ?, ?, ?, ?)",
                (meta.name, meta.replication, meta.backlog, meta.shard_count, meta.created_ms),
            )
            ids: list[int] = []
            for start, end in ranges:
                cursor = conn.execute(
                    "INSERT INTO shards (stream, start_key, end_key, epoch, active)"
                    " VALUES (?, ?, ?, 0, 1)",
                    (meta.name, str(start), str(end)),
                )
                assert cursor.lastrowid is not None
                ids.append(cursor.lastrowid)
            return ids

        ids = await self._run_op(op)
        shards = [
            ShardMeta(sid, meta.name, start, end, 0, True)
            for sid, (start, end) in zip(ids, ranges, strict=True)
        ]
        self.streams[meta.name] = meta
        for shard in shards:
            self.shards[shard.shard_id] = shard
            self._tails[shard.shard_id] = 0
            self._next_batch[shard.shard_id] = 1
        return shards

    def stream_shards(self, stream: str) -> list[ShardMeta]:
        return sorted(
            (s for s in self.shards.values() if s.stream == stream), key=lambda s: s.start
        )

    @_completes
    async def delete_stream(self, name: str) -> None:
        """Delete a stream, its shards and batches, and the subscriptions on it."""
        shard_ids = [s.shard_id for s in self.stream_shards(name)]
        subs = [s.sub_id for s in self.subscriptions.values() if s.stream == name]
        # Forget in memory first: appends to these shards fail from now on.
        self.streams.pop(name, None)
        for sid in shard_ids:
            self.shards.pop(sid, None)
        for sub in subs:
            self._forget_subscription(sub)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM streams WHERE name = ?", (name,))
            for sid in shard_ids:
                conn.execute("DELETE FROM shards WHERE id = ?", (sid,))
                conn.execute(
                    "DELETE FROM records WHERE pos BETWEEN ? AND ?",
                    (position(sid, 0), position(sid, MAX_BATCH_ID)),
                )
            for sub in subs:
                conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub,))
                conn.execute("DELETE FROM subscription_progress WHERE subscription = ?", (sub,))

        await self._run_op(op)
        for sid in shard_ids:
            self._tails.pop(sid, None)
            self._next_batch.pop(sid, None)
            self._notify(sid)

    async def trim(self, shard_id: int, upto: int) -> None:
        """Delete the batches of a shard with ids up to and including `upto`."""
        upto = min(upto, self.tail(shard_id))
        if upto <= 0:
            return

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "DELETE FROM records WHERE pos BETWEEN ? AND ?",
                (position(shard_id, 0), position(shard_id, upto)),
            )
            conn.execute(
                "UPDATE shards SET trimmed_upto = MAX(trimmed_upto, ?) WHERE id = ?",
                (upto, shard_id),
            )

        await self._run_op(op)

    @_completes
    async def create_subscription(self, meta: SubscriptionMeta, start: dict[int, int]) -> None:
        """Store a subscription that starts after batch `start[shard_id]` on each shard."""

        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO subscriptions VALUES (?, ?, ?, ?, ?, ?)",
                (
                    meta.sub_id,
                    meta.stream,
                    meta.ack_timeout,
                    meta.max_unacked,
                    meta.offset,
                    meta.created_ms,
                ),
            )
            conn.executemany(
                "INSERT OR REPLACE INTO subscription_progress VALUES (?, ?, ?, '{}')",
                [(meta.sub_id, sid, upto) for sid, upto in start.items()],
            )

        await self._run_op(op)
        self.subscriptions[meta.sub_id] = meta
        self.progress[meta.sub_id] = {sid: Progress(upto) for sid, upto in start.items()}

    async def delete_subscription(self, sub_id: str) -> None:
        self._forget_subscription(sub_id)

        def op(conn: sqlite3.Connection) -> None:
            conn.execute("DELETE FROM subscriptions WHERE id = ?", (sub_id,))
            conn.execute("DELETE FROM subscription_progress WHERE subscription = ?", (sub_id,))

        await self._run_op(op)

    def _forget_subscription(self, sub_id: str) -> None:
        self.subscriptions.pop(sub_id, None)
        self.progress.pop(sub_id, None)
        for key in [k for k in self._pending_progress if k[0] == sub_id]:
            del self._pending_progress[key]
