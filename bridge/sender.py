"""Drains the accumulator into HStreamDB: one append in flight per shard, retries, rediscovery.

After aiokafka's `sender.py`: a shard queue with closed batches and no append in flight gets a
drain task; it appends the oldest batch, resolves it, and goes on while batches are waiting, so
per-shard (and so per-key) order holds. Decisions are made by error class, never by message text:

- retriable errors (node down, time-out, transient store fault): the same batch again after a
  capped, jittered exponential backoff, for as long as it takes (the broker holds the rest);
- the stream or shard is gone (deleted, recreated, resharded): the stream's shard map is looked
  up again (the stream created again when auto-create is on) and its waiting records re-placed;
- a batch over the size limit: split in two; a single record over it, or any other refusal:
  its records go to the dead-letter stream, and their messages are then acknowledged.
"""

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from bridge import deadletter
from bridge.accumulator import Accumulator, Batch, Item, ShardQueue, StreamState
from bridge.backoff import backoff_delay
from bridge.hstream.errors import (
    HStreamError,
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

    def failed(self, stream: str, items: Sequence[Item], reason: str) -> None: ...


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


class Sender:
    def __init__(self, target: AppendTarget, config: SenderConfig, events: SenderEvents) -> None:
        self._target = target
        self._config = config
        self._events = events
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self.accumulator: Accumulator | None = None
        self.inflight = 0

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
        if not task.cancelled() and task.exception() is not None:
            logger.error("sender task %s failed", task.get_name(), exc_info=task.exception())

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
        """Store one batch; False when the stream must be looked up again first."""
        stream = queue.stream.name
        attempt = 0
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
                error: HStreamError = HStreamError(f"append timed out: {exc}")
                error_retriable = True
            except HStreamError as exc:
                error = exc
                error_retriable = exc.retriable
            except Exception as exc:  # a bug must not lose the batch: log it, then retry
                logger.exception("unexpected error appending to %s", stream)
                error = HStreamError(f"unexpected error: {exc!r}")
                error_retriable = True
            else:
                self._events.stored(stream, batch.items, time.monotonic() - started)
                self._settle(batch.items)
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
            if isinstance(error, RecordTooLarge) and len(batch.items) > 1:
                half = len(batch.items) // 2
                first, second = Batch(batch.created), Batch(batch.created)
                first.items, second.items = batch.items[:half], batch.items[half:]
                first.size = sum(item.size for item in first.items)
                second.size = batch.size - first.size
                queue.ready.popleft()
                queue.ready.appendleft(second)
                queue.ready.appendleft(first)
                return True
            if not error_retriable:
                self._reject(stream, batch.items, deadletter.REASON_REJECTED, error)
                return True
            if self._closing:
                return False  # unsettled: its messages are not acknowledged
            await self._wait_retry(stream, error, attempt, f"append to shard {queue.shard_id}")
            attempt += 1

    def _settle(self, items: Sequence[Item]) -> None:
        for item in items:
            if item.delivery is not None:
                item.delivery.record_done()
        self._acc.release(list(items))

    def _reject(
        self, stream: str, items: Sequence[Item], reason: str, error: BaseException
    ) -> None:
        """Park refused records in the dead-letter stream (or give up on dead letters)."""
        code = getattr(error, "code", None)
        detail = f"{type(error).__name__} {code}: {error}" if code is not None else str(error)
        if stream == self._config.dead_letter_stream:
            logger.error(
                "dead-letter stream %s refused %d records: %s",
                stream,
                len(items),
                detail,
                extra={"stream": stream, "code": code},
            )
            self._events.failed(stream, items, reason)
            self._settle(items)
            return
        logger.warning(
            "%s refused %d records (%s); parking them in %s",
            stream,
            len(items),
            detail,
            self._config.dead_letter_stream,
            extra={"stream": stream, "code": code},
        )
        self._events.dead_lettered(items, reason)
        letters = [
            Item(
                deadletter.letter_from_record(
                    item.data, reason=reason, rule_id=item.rule_id, stream=stream, error=detail
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
            self._acc.add(self._config.dead_letter_stream, letter_item)
        self._acc.release(list(items))

    # --- shard maps ---------------------------------------------------------------------------

    async def _resolve(self, state: StreamState) -> None:
        """Look up (or create) a stream and place its waiting records by its shard map."""
        if state.sending:
            return  # the last drain of this stream calls again
        attempt = 0
        while True:
            try:
                shard_map = await self._target.shard_map(state.name)
            except StreamNotFound as exc:
                if not self._config.auto_create:
                    self._reject_stream(state, deadletter.REASON_STREAM_NOT_FOUND, exc)
                    return
                try:
                    await self._target.create_stream(
                        state.name,
                        shard_count=self._config.shard_count,
                        replication_factor=self._config.replication_factor,
                    )
                    logger.info("created stream %s", state.name, extra={"stream": state.name})
                except StreamExists:
                    pass
                except InvalidName as create_error:
                    self._reject_stream(state, deadletter.REASON_INVALID_STREAM_NAME, create_error)
                    return
                except HStreamError as create_error:
                    if not create_error.retriable:
                        self._reject_stream(state, deadletter.REASON_REJECTED, create_error)
                        return
                    await self._wait_retry(state.name, create_error, attempt)
                    attempt += 1
                continue
            except HStreamError as exc:
                if not exc.retriable:
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

    async def _wait_retry(
        self, stream: str, error: HStreamError, attempt: int, what: str = "lookup"
    ) -> None:
        """Count a retry, log the first and every 20th, then back off."""
        self._events.retried(stream, error)
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
