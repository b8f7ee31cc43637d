"""Drains the accumulator into HStreamDB: one append in flight per shard, retries, rediscovery.

After aiokafka's `sender.py`: a shard queue with closed batches and no append in flight gets a
drain task; it appends the oldest batch, resolves it, and goes on while batches are waiting, so
per-shard (and so per-key) order holds. Decisions are made by error class, never by message text:

- an outage (node down, UNAVAILABLE, a time-out): the same batch again after a capped, jittered
  exponential backoff, for as long as it takes (the broker holds the rest);
- the stream or shard is gone (deleted, recreated, resharded): the stream's shard map is looked
  up again (the stream created again when auto-create is on) and its waiting records re-placed;
- a batch over the size limit: split in two;
- anything else (a refusal, or INTERNAL, UNKNOWN, RESOURCE_EXHAUSTED, an unexpected exception)
  may be a poison record: a refusal at once, other errors after `error_retries` retries, split
  the batch in two (each part retried once), and a single record that still fails goes to the
  dead-letter stream with the error. Other records of the shard, and every other shard, flow on.

The one invariant: a record is settled (its message may be acknowledged) only when it is stored,
in its stream or as a dead letter. A dead letter the store refuses is never settled: it is
retried with backoff (a letter too large is cut in half first), and `dead_letters_blocked`
says so (the service reports it on /ready). Records are settled before anything is reported, so
a failing metrics call can neither re-send a stored batch nor hold back an acknowledgement.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge import deadletter
from bridge.accumulator import Accumulator, Batch, Item, ShardQueue, StreamState
from bridge.backoff import backoff_delay
from bridge.hstream.errors import (
    AccessDenied,
    HStreamError,
    HStreamUnavailable,
    InternalError,
    InvalidName,
    NotFound,
    RecordTooLarge,
    StreamExists,
    StreamNotFound,
)
from bridge.hstream.records import Compression, RecordId
from bridge.hstream.shards import ShardMap

logger = logging.getLogger(__name__)


class AppendTarget(Protocol):
    """The part of `HStreamClient` the sender uses."""

    async def shard_map(self, stream: str) -> ShardMap: ...

    async def create_stream(
        self, name: str, *, shard_count: int = 1, replication_factor: int = 1
    ) -> object: ...

    async def append_batch(
        self, stream: str, shard_id: int, encoded: Sequence[bytes], compression: Compression
    ) -> Sequence[RecordId]: ...

    def invalidate(self, stream: str) -> None: ...


class SenderEvents(Protocol):
    """What the sender reports (metrics); every method is called once per batch at most."""

    def stored(self, stream: str, items: Sequence[Item], append_seconds: float) -> None: ...

    def retried(self, stream: str, error: BaseException) -> None: ...

    def dead_lettered(self, items: Sequence[Item], reason: str) -> None: ...


@dataclass(frozen=True, slots=True)
class SenderConfig:
    compression: Compression = Compression.NONE
    append_timeout: float = 30.0
    backoff_min: float = 0.1
    backoff_max: float = 5.0
    auto_create: bool = True
    shard_count: int = 1
    replication_factor: int = 1
    dead_letter_stream: str = "bridge_dead_letter"
    max_record_bytes: int = 1 << 20
    error_retries: int = 5
    max_streams: int | None = None  # streams this sender may create (None: no limit)


def is_outage(error: BaseException) -> bool:
    """HStreamDB (or the way to it) is down, or refuses our credentials: wait it out, however
    long it takes (a record is never dead-lettered for what an operator must fix)."""
    return isinstance(error, HStreamUnavailable | AccessDenied | TimeoutError)


class Sender:
    def __init__(
        self,
        target: AppendTarget,
        config: SenderConfig,
        events: SenderEvents,
        on_fatal: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._target = target
        self._config = config
        self._events = events
        self._on_fatal = on_fatal
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.accumulator: Accumulator | None = None
        self.inflight = 0
        self.streams_created = 0
        # Set while a dead letter is refused for a reason other than an outage (its message
        # cannot be acknowledged until it is stored: /ready says so).
        self.dead_letters_blocked: str | None = None

    def bind(self, accumulator: Accumulator) -> None:
        self.accumulator = accumulator

    @property
    def _acc(self) -> Accumulator:
        assert self.accumulator is not None, "Sender.bind() first"
        return self.accumulator

    def _spawn(self, coro: "asyncio._CoroutineLike[None]", name: str) -> None:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is None:
            return
        # A task that dies holds records nobody will send: capacity is lost for good and their
        # messages are never acknowledged. That is fatal; the supervisor ends the process so
        # the orchestrator restarts it and the broker redelivers.
        logger.error("sender task %s failed", task.get_name(), exc_info=exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)

    # --- callbacks from the accumulator -------------------------------------------------------

    def on_ready(self, queue: ShardQueue) -> None:
        if queue.sending or queue.stream.resolving or self._closing:
            return
        queue.sending = True
        queue.stream.sending += 1
        self._spawn(self._drain(queue), f"append:{queue.stream.name}:{queue.shard_id}")

    def on_new_stream(self, state: StreamState) -> None:
        if self._closing:
            return
        self._spawn(self._resolve(state), f"resolve:{state.name}")

    # --- draining -----------------------------------------------------------------------------

    async def _drain(self, queue: ShardQueue) -> None:
        state = queue.stream
        try:
            while queue.ready and not state.resolving:
                batch = self._acc.coalesce(queue)
                settled = await self._append(queue, batch)
                if not settled:
                    break
                if queue.ready and queue.ready[0] is batch:
                    queue.ready.popleft()
                self._acc.close_if_idle(queue)
        finally:
            queue.sending = False
            state.sending -= 1
        if self._closing:
            return
        if state.resolving and state.sending == 0:
            self._spawn(self._resolve(state), f"resolve:{state.name}")
        elif queue.ready and not state.resolving:
            self.on_ready(queue)

    async def _append(self, queue: ShardQueue, batch: Batch) -> bool:
        """Store one batch; False when the stream must be looked up again first (or when closing
        cut a retry short: then the batch stays unsettled and its messages unacknowledged)."""
        stream = queue.stream.name
        dead_letters = stream == self._config.dead_letter_stream
        attempt = 0  # backoff step
        failures = 0  # failures that were not an outage
        while True:
            started = time.monotonic()
            self.inflight += 1
            try:
                # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a
                # cancellation that lands as the call fails, and the retry loop would outlive
                # aclose().
                async with asyncio.timeout(self._config.append_timeout):
                    await self._target.append_batch(
                        stream,
                        queue.shard_id,
                        [item.data for item in batch.items],
                        self._config.compression,
                    )
            except TimeoutError as exc:
                error: HStreamError = HStreamUnavailable(f"append timed out: {exc}")
            except HStreamError as exc:
                error = exc
            except Exception as exc:  # a bug or a foreign error: never lose or settle the batch
                logger.exception("unexpected error appending to %s", stream)
                error = InternalError(f"unexpected error: {exc!r}")
            else:
                self._settle(batch.items)
                if dead_letters:
                    self.dead_letters_blocked = None
                self._report(self._events.stored, stream, batch.items, time.monotonic() - started)
                return True
            finally:
                self.inflight -= 1
            if isinstance(error, StreamNotFound | NotFound):
                logger.warning(
                    "stream %s or shard %d is gone, looking it up again",
                    stream,
                    queue.shard_id,
                    extra={"stream": stream, "code": error.code},
                )
                self._target.invalidate(stream)
                queue.stream.resolving = True
                return False
            if not is_outage(error):
                failures += 1
                limit = 1 if batch.split else self._config.error_retries
                if isinstance(error, RecordTooLarge) or not error.retriable or failures > limit:
                    if len(batch.items) > 1:
                        self._split(queue, batch, error)
                        return True
                    if not dead_letters:
                        self._reject(stream, batch.items, self._reason(error), error)
                        return True
                    # A dead letter is never given up on: cut it if it is too large, else wait.
                    self.dead_letters_blocked = f"{type(error).__name__}: {error}"
                    if isinstance(error, RecordTooLarge):
                        self._shrink(batch)
            if self._closing:
                return False  # unsettled: its messages are not acknowledged
            what = "dead letter append" if dead_letters else f"append to shard {queue.shard_id}"
            await self._wait_retry(stream, error, attempt, what)
            attempt += 1

    @staticmethod
    def _reason(error: HStreamError) -> str:
        if isinstance(error, RecordTooLarge):
            return deadletter.REASON_RECORD_TOO_LARGE
        if error.retriable:
            return deadletter.REASON_APPEND_FAILED  # kept failing: INTERNAL, unexpected, ...
        return deadletter.REASON_REJECTED

    def _split(self, queue: ShardQueue, batch: Batch, error: HStreamError) -> None:
        """Replace a failing batch at the head of its queue by its two halves, in order."""
        logger.warning(
            "append of %d records to %s failed (%s); splitting the batch",
            len(batch.items),
            queue.stream.name,
            error,
            extra={"stream": queue.stream.name, "code": error.code},
        )
        half = len(batch.items) // 2
        first = Batch(batch.created, split=True)
        second = Batch(batch.created, split=True)
        first.items, second.items = batch.items[:half], batch.items[half:]
        first.size = sum(item.size for item in first.items)
        second.size = batch.size - first.size
        if queue.ready and queue.ready[0] is batch:
            queue.ready.popleft()
        queue.ready.appendleft(second)
        queue.ready.appendleft(first)

    def _shrink(self, batch: Batch) -> None:
        """Cut a refused dead letter's payload in half (the store's limit is below ours)."""
        item = batch.items[0]
        smaller = deadletter.shrink(item.data)
        if smaller is None:
            return
        self._acc.resize(item, smaller)
        batch.size = item.size

    def _report(self, event: Callable[..., None], *args: object) -> None:
        """Metrics after the fact: a failure here is logged, never a lost or repeated batch."""
        try:
            event(*args)
        except Exception:
            logger.exception("reporting a sender event failed")

    def _settle(self, items: Sequence[Item]) -> None:
        for item in items:
            if item.delivery is not None:
                item.delivery.record_done()
        self._acc.release(list(items))

    def _reject(
        self, stream: str, items: Sequence[Item], reason: str, error: BaseException
    ) -> None:
        """Park refused records in the dead-letter stream; their messages are acknowledged only
        once the letters are stored."""
        code = getattr(error, "code", None)
        name = type(error).__name__ if code is None else f"{type(error).__name__} {code}"
        detail = f"{name}: {error}"
        dead_letter_stream = self._config.dead_letter_stream
        assert stream != dead_letter_stream, "dead letters are retried, never rejected"
        logger.warning(
            "%s refused %d records (%s); parking them in %s",
            stream,
            len(items),
            detail,
            dead_letter_stream,
            extra={"stream": stream, "code": code},
        )
        letters = [
            Item(
                deadletter.letter_from_record(
                    item.data,
                    reason=reason,
                    rule_id=item.rule_id,
                    stream=stream,
                    error=detail,
                    max_bytes=self._config.max_record_bytes,
                ),
                "",
                item.delivery,
                item.received_at,
                item.rule_id,
                item.held,  # the message it still holds back
            )
            for item in items
        ]
        # Add the letters before releasing the originals: the buffer must not look empty in
        # between (a shutdown flush waiting for it would return with the letters unsent).
        for letter_item in letters:
            self._acc.add(dead_letter_stream, letter_item)
        self._acc.release(list(items))
        self._report(self._events.dead_lettered, items, reason)

    # --- shard maps ---------------------------------------------------------------------------

    async def _resolve(self, state: StreamState) -> None:
        """Look up (or create) a stream and place its waiting records by its shard map.

        A stream that cannot be had sends its records to the dead-letter stream; the
        dead-letter stream itself is waited for, however long it takes (its records'
        messages stay unacknowledged meanwhile).
        """
        if state.sending:
            return  # the last drain of this stream calls again
        dead_letters = state.name == self._config.dead_letter_stream
        attempt = 0
        while True:
            try:
                shard_map = await self._target.shard_map(state.name)
            except StreamNotFound as exc:
                problem = self._create_problem(state.name, exc)
                if problem is not None:
                    reason, error = problem
                    if not dead_letters:
                        self._reject_stream(state, reason, error)
                        return
                    self.dead_letters_blocked = f"{reason}: {error}"
                    await self._wait_retry(state.name, error, attempt)
                    attempt += 1
                    continue
                try:
                    await self._target.create_stream(
                        state.name,
                        shard_count=self._config.shard_count,
                        replication_factor=self._config.replication_factor,
                    )
                    self.streams_created += 1
                    logger.info("created stream %s", state.name, extra={"stream": state.name})
                except HStreamError as create_error:
                    if not isinstance(create_error, StreamExists) and not dead_letters:
                        if isinstance(create_error, InvalidName):
                            reason = deadletter.REASON_INVALID_STREAM_NAME
                            self._reject_stream(state, reason, create_error)
                            return
                        if not (create_error.retriable or is_outage(create_error)):
                            self._reject_stream(state, deadletter.REASON_REJECTED, create_error)
                            return
                    # Exists (made by someone else, or not visible yet), or a transient
                    # failure: back off before looking again, never spin.
                    await self._wait_retry(state.name, create_error, attempt)
                    attempt += 1
                continue
            except HStreamError as exc:
                if not dead_letters and not (exc.retriable or is_outage(exc)):
                    self._reject_stream(state, deadletter.REASON_REJECTED, exc)
                    return
                await self._wait_retry(state.name, exc, attempt)
                attempt += 1
                continue
            except Exception as exc:  # e.g. a stream with no active shard: retry, never stall
                logger.exception("unexpected error looking up stream %s", state.name)
                await self._wait_retry(state.name, HStreamError(repr(exc)), attempt)
                attempt += 1
                continue
            self._acc.set_shard_map(state, shard_map)
            return

    def _create_problem(
        self, name: str, missing: StreamNotFound
    ) -> tuple[str, HStreamError] | None:
        """Why a missing stream may not be created, or None when it may."""
        if not self._config.auto_create:
            return deadletter.REASON_STREAM_NOT_FOUND, missing
        limit = self._config.max_streams
        if (
            limit is not None
            and self.streams_created >= limit
            and (name != self._config.dead_letter_stream)
        ):
            return deadletter.REASON_STREAM_LIMIT, HStreamError(
                f"stream {name} does not exist and this bridge has created {limit} streams"
                " (--max-streams)"
            )
        return None

    async def _wait_retry(
        self, stream: str, error: HStreamError, attempt: int, what: str = "lookup"
    ) -> None:
        """Count a retry, log the first and every 20th, then back off."""
        self._report(self._events.retried, stream, error)
        if attempt == 0 or attempt % 20 == 0:
            logger.warning(
                "%s of stream %s failed (%s), retrying",
                what,
                stream,
                error,
                extra={"stream": stream, "code": error.code},
            )
        await asyncio.sleep(
            backoff_delay(attempt, self._config.backoff_min, self._config.backoff_max)
        )

    def _reject_stream(self, state: StreamState, reason: str, error: HStreamError) -> None:
        items = self._acc.take_all(state)
        del self._acc.streams[state.name]
        if items:
            self._reject(state.name, items, reason, error)

    # --- shutdown -----------------------------------------------------------------------------

    async def flush(self, within: float) -> bool:
        """Send everything buffered; True when all of it was settled within `within` seconds."""
        self._acc.close_all()
        try:
            async with asyncio.timeout(within):
                await self._acc.wait_empty()
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        self._closing = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
