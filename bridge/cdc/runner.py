"""Runs CDC sources: one runner per source, between its reader and the shared pipeline.

Debezium's split, in a few lines: the reader (bridge/cdc/postgres.py, mysql.py) owns the
snapshot and streaming phases and the database lock; the runner owns the offset context. It
turns every transaction into records (bridge/cdc/envelope.py), hands them to the pipeline, and
commits positions in transaction order: a position is stored in HStreamDB (PositionStore) only
when every record of its transaction and of every earlier one is stored (or dead-lettered), and
only then told to the reader (PostgreSQL's flush LSN). A restart resumes at the last stored
position, so what repeats is at most the transactions after it.

A reader's failures never crash the bridge: Standby (another process holds the source) is
retried every `standby_retry` seconds; a ReaderError is shown in the status (with the setting to
change) and retried with backoff; PositionLost stays an error until `resnapshot()`.
"""

import asyncio
import collections
import contextlib
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Literal, Protocol

from bridge.backoff import Backoff
from bridge.cdc import envelope
from bridge.cdc._model import PositionLost, Reader, ReaderError, Standby, Transaction
from bridge.cdc.config import Source
from bridge.cdc.positions import REFRESH_SECONDS
from bridge.hstream.errors import HStreamError
from bridge.router import Output

__all__ = ["Pipeline", "Positions", "SourceRunner", "SourceStatus", "State"]

logger = logging.getLogger(__name__)

State = Literal["starting", "snapshot", "streaming", "standby", "error", "disabled"]


class Pipeline(Protocol):
    """What a runner needs from the bridge (bridge/service.py provides it)."""

    dead_letter_stream: str
    max_record_bytes: int

    def wait_for_room(self) -> Awaitable[None]:
        """Resolves while the byte budget (or the disk buffer) has room."""
        ...

    def accept(self, outputs: list[Output], received_at: float) -> Awaitable[None]:
        """Take records in order; resolves when every one is stored (or dead-lettered)."""
        ...


class Positions(Protocol):
    """Where committed positions are kept (bridge.cdc.positions.PositionStore)."""

    async def load(self) -> Mapping[str, Any] | None: ...

    async def save(self, position: Mapping[str, Any] | None) -> None: ...


@dataclasses.dataclass(slots=True)
class SourceStatus:
    state: State = "starting"
    committed: Mapping[str, Any] | None = None
    committed_at: float | None = None
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    error: str | None = None
    setting: str | None = None
    notes: list[str] = dataclasses.field(default_factory=list)
    changes: dict[str, int] = dataclasses.field(default_factory=dict)  # by op
    transactions: int = 0
    pending_transactions: int = 0

    def public(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "committed_position": self.committed,
            "committed_at": self.committed_at,
            "lag_bytes": self.lag_bytes,
            "lag_seconds": self.lag_seconds,
            "last_error": self.error,
            "setting": self.setting,
            "notes": list(self.notes),
            "changes": dict(self.changes),
            "transactions": self.transactions,
            "pending_transactions": self.pending_transactions,
        }


class SourceRunner:
    """One source: its reader, its committed positions, its status (see the module docstring)."""

    def __init__(
        self,
        source: Source,
        reader: Reader,
        pipeline: Pipeline,
        positions: Positions,
        *,
        backoff_min: float = 0.5,
        backoff_max: float = 30.0,
        standby_retry: float = 2.0,
        commit_interval: float = 0.1,
        may_run: Callable[[], bool] | None = None,
    ) -> None:
        self.source = source
        self.reader = reader
        self.pipeline = pipeline
        self.positions = positions
        self.status = SourceStatus()
        self._backoff = Backoff(backoff_min, backoff_max)
        self._standby_retry = standby_retry
        self._commit_interval = commit_interval
        self._may_run = may_run
        # Delivered transactions not yet committed, in delivery order: (stored?, position);
        # the position is None for a part of a transaction that is not its last.
        self._pending: collections.deque[tuple[Awaitable[None], Mapping[str, Any] | None]] = (
            collections.deque()
        )
        self._parted = False  # the last transaction delivered was a part (more of it follows)
        self._generation = 0  # counts the times `_pending` was emptied for a new reader
        self._commit_lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._resnapshot = asyncio.Event()
        self._loaded = False
        self._task: asyncio.Task[None] | None = None
        self._reading: asyncio.Task[None] | None = None
        self._committer: asyncio.Task[None] | None = None
        self.on_commit: Callable[[Mapping[str, Any]], None] | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        self._committer = asyncio.create_task(
            self._commit_loop(), name=f"cdc-commit-{self.source.id}"
        )
        self._task = asyncio.create_task(self._run(), name=f"cdc-source-{self.source.id}")

    async def stop(self, commit_timeout: float = 5.0) -> None:
        """Stop reading (the reader closes its connections and releases the lock), then
        commit what is stored within `commit_timeout`."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._committer is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(commit_timeout):
                    await self._commit_stored()
            self._committer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._committer

    def stop_reading(self) -> None:
        """Stop the reader for good (shutdown); stored positions are still committed."""
        if self._task is not None:
            self._task.cancel()

    async def wait_reading_stopped(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def resnapshot(self) -> None:
        """Start over: forget the committed position and load the tables again."""
        self._resnapshot.set()
        if self._reading is not None:
            self._reading.cancel()  # the loop sees the request and starts over

    # --- the reader loop ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            try:
                if self._resnapshot.is_set():
                    await self.positions.save(None)
                    self._resnapshot.clear()
                    self.status.committed = None
                    self._loaded = False
                if not self._loaded:
                    self.status.committed = await self.positions.load()
                    self._loaded = True
            except HStreamError as exc:
                self._fail(f"HStreamDB does not answer: {exc}", None)
                await asyncio.sleep(self._backoff.next())
                continue
            if self._may_run is not None and not self._may_run():
                # Another replica is proposed for this source (cluster placement): stand by
                # without asking the database; its lock decides whoever does ask.
                self.status.state = "standby"
                await asyncio.sleep(self._standby_retry)
                continue
            self._pending.clear()  # what was delivered and not committed is read again
            self._generation += 1
            self.status.pending_transactions = 0
            self._reading = asyncio.create_task(
                self.reader.run(self.status.committed, self),
                name=f"cdc-reader-{self.source.id}",
            )
            try:
                try:
                    await self._reading
                finally:
                    self._reading.cancel()  # when this loop itself is cancelled
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
                # Only the reader was cancelled: a re-snapshot was asked for.
            except Standby as exc:
                self.status.state = "standby"
                self.status.error = None
                self.status.setting = None
                logger.debug("source %s on standby: %s", self.source.id, exc)
                await asyncio.sleep(self._standby_retry)
            except PositionLost as exc:
                self._fail(str(exc), exc.setting)
                logger.error("source %s cannot resume: %s", self.source.id, exc)  # noqa: TRY400
                await self._resnapshot.wait()
            except ReaderError as exc:
                self._fail(str(exc), exc.setting)
                delay = self._backoff.next()
                logger.warning("source %s: %s (retrying in %.1f s)", self.source.id, exc, delay)
                await asyncio.sleep(delay)
            else:
                self._fail("the reader stopped", None)
                await asyncio.sleep(self._backoff.next())

    def _fail(self, error: str, setting: str | None) -> None:
        self.status.state = "error"
        self.status.error = error
        self.status.setting = setting

    # --- ChangeSink ---------------------------------------------------------------------------

    async def deliver(self, transaction: Transaction) -> None:
        await self.pipeline.wait_for_room()
        outputs = envelope.outputs(
            self.source,
            transaction,
            dead_letter_stream=self.pipeline.dead_letter_stream,
            max_record_bytes=self.pipeline.max_record_bytes,
        )
        stored = self.pipeline.accept(outputs, time.monotonic())
        # A part of a large transaction stores no position: only its last part does.
        self._pending.append((stored, transaction.position if transaction.complete else None))
        self.status.pending_transactions = len(self._pending)
        future = asyncio.ensure_future(stored)
        future.add_done_callback(lambda _: self._wake.set())
        parted, self._parted = self._parted, not transaction.complete
        if transaction.complete and (transaction.changes or parted):
            self.status.transactions += 1
        if transaction.changes:
            counts = self.status.changes
            for change in transaction.changes:
                counts[change.op] = counts.get(change.op, 0) + 1
        self._backoff.reset()
        if self.status.error is not None:
            self.status.error = None
            self.status.setting = None
        # A reader with changes waiting reads on without suspending while the budget has room;
        # yield once per transaction, so appends, commits and MQTT intake run in between.
        await asyncio.sleep(0)

    def set_state(self, state: Literal["snapshot", "streaming"]) -> None:
        self.status.state = state
        self.status.error = None
        self.status.setting = None

    def note(self, text: str) -> None:
        if text not in self.status.notes:
            self.status.notes.append(text)
            logger.info("source %s: %s", self.source.id, text)

    def set_lag(self, lag_bytes: int | None, lag_seconds: float | None) -> None:
        self.status.lag_bytes = lag_bytes
        self.status.lag_seconds = lag_seconds

    # --- commits ------------------------------------------------------------------------------

    def _stored_prefix(self) -> tuple[int, Mapping[str, Any] | None]:
        """How many transactions at the head of the pending queue are stored, and the last
        position among them (None when they are only parts of a transaction)."""
        count, latest = 0, None
        for stored, position in self._pending:
            if not _done(stored):
                break
            count += 1
            if position is not None:
                latest = position
        return count, latest

    async def _commit_stored(self) -> None:
        # The commit loop and stop() both commit: one at a time, or both would pop the same
        # transactions off the queue and the older save could land last.
        async with self._commit_lock:
            await self._commit_prefix()

    async def _commit_prefix(self) -> None:
        count, position = self._stored_prefix()
        if position is None:
            return
        generation = self._generation
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                await self.positions.save(position)
                break
            except HStreamError as exc:  # an outage: the position waits, nothing is lost
                logger.warning("source %s: position not stored yet: %s", self.source.id, exc)
                await asyncio.sleep(backoff.next())
        # Only now are they committed: until then they count as pending in the status (unless
        # a new reader emptied the queue meanwhile: what is in it now is its own).
        if generation == self._generation:
            for _ in range(count):
                self._pending.popleft()
        self.status.pending_transactions = len(self._pending)
        self.status.committed = position
        self.status.committed_at = time.time()
        self._last_save = time.monotonic()
        self.reader.committed(position)
        if self.on_commit is not None:
            self.on_commit(position)

    async def _commit_loop(self) -> None:
        self._last_save = time.monotonic()
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(60.0):
                    await self._wake.wait()
            self._wake.clear()
            await self._commit_stored()
            if (
                time.monotonic() - self._last_save > REFRESH_SECONDS
                and self.status.committed is not None
                and not self._pending
            ):  # keep the last position inside the stream's retention
                with contextlib.suppress(HStreamError):
                    await self.positions.save(self.status.committed)
                    self._last_save = time.monotonic()
            await asyncio.sleep(self._commit_interval)


def _done(awaitable: Awaitable[None]) -> bool:
    done = getattr(awaitable, "done", None)
    return bool(done()) if done is not None else False
