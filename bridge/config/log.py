"""The configuration log: rules and sources as full, versioned snapshots in one HStreamDB stream.

Kafka Connect keeps its configuration in a topic the same way. Each record is a whole document

    {"version": 7, "prev_version": 6, "rules": [...], "sources": [...],
     "replica": "bridge-a", "nonce": "...", "ts": 1764460800123}

appended to a one-shard stream (`--config-stream`). The stream's total order decides races:
the record that applies is the FIRST one whose `prev_version` is the version applied so far;
a later record with the same `prev_version` lost (its writer answers 409), and every replica,
reading the same order, agrees on which won. A writer appends, then follows the stream until it
reads its own record (by `nonce`), and only then answers. Every replica follows the stream and
applies each winning document live (`on_apply`); the local rules and sources files are a cache
for starting while HStreamDB is down.

HStreamDB has no conditional append, so a replica reads the stream from its start once when it
starts (documents are small and written rarely), then follows its tail. What it reads up to the
tail at a (re)start decides the versions only: the newest winner is applied once, then. Applying
each old version in turn ran the configurations of the past for a moment: a deleted source's
runner started again, and could create its database slot again on a replica that never drops it.
"""

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, Literal

import orjson

from bridge.backoff import Backoff
from bridge.hstream.client import HStreamClient
from bridge.hstream.errors import HStreamError, StreamExists, StreamNotFound
from bridge.hstream.records import Record, RecordId

__all__ = ["ConfigConflict", "ConfigLog", "ConfigNotApplied", "Document", "PreconditionFailed"]

logger = logging.getLogger(__name__)


class ConfigConflict(Exception):
    """Another replica changed the configuration first (HTTP 409); nothing was applied."""


class ConfigNotApplied(Exception):
    """A version is stored in the config stream (it stands: the other replicas apply it), but
    this replica could not apply it; it applies the newest version again at its next start."""

    def __init__(self, version: int, cause: BaseException) -> None:
        super().__init__(
            f"configuration version {version} is stored, but this replica could not apply it"
            f" ({type(cause).__name__}: {cause}); it applies the newest version at its next start"
        )
        self.version = version


class PreconditionFailed(Exception):
    """`If-Match` named a version that is not the current one (HTTP 412)."""

    def __init__(self, expected: int, current: int) -> None:
        super().__init__(f"the configuration is at version {current}, not {expected}")
        self.expected = expected
        self.current = current


@dataclasses.dataclass(frozen=True, slots=True)
class Document:
    version: int
    rules: tuple[Mapping[str, Any], ...]
    sources: tuple[Mapping[str, Any], ...]
    replica: str = ""


Apply = Callable[[Document], Awaitable[None]]


class ConfigLog:
    def __init__(
        self,
        client: HStreamClient,
        stream: str,
        *,
        replica: str,
        on_apply: Apply,
        replication_factor: int = 1,
        poll_interval: float = 0.1,
    ) -> None:
        self._client = client
        self.stream = stream
        self._replica = replica
        self._on_apply = on_apply
        self._replication_factor = replication_factor
        self._poll_interval = poll_interval
        self.version = 0
        self.document: Document | None = None
        self._applied: Document | None = None  # the last document given to on_apply
        self._last_id: RecordId | None = None
        self._waiting: dict[str, asyncio.Future[bool]] = {}
        self._caught_up = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._write_lock = asyncio.Lock()
        self.error: str | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    def start(self) -> "asyncio.Task[None]":
        self._task = asyncio.create_task(self._follow(), name="config-log")
        return self._task

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for future in self._waiting.values():
            future.cancel()

    async def wait_caught_up(self, timeout: float | None) -> bool:
        """True once the stream was read to its tail (at least once); False on time-out."""
        try:
            async with asyncio.timeout(timeout):
                await self._caught_up.wait()
        except TimeoutError:
            return False
        return True

    @property
    def caught_up(self) -> bool:
        return self._caught_up.is_set()

    # --- writing ------------------------------------------------------------------------------

    async def propose(
        self,
        rules: Sequence[Mapping[str, Any]],
        sources: Sequence[Mapping[str, Any]],
        *,
        expected_version: int | None = None,
        if_match: int | None = None,
    ) -> int:
        """Append a new document on top of `expected_version` (default: the current one) and
        wait until it is read back: its version when it won. PreconditionFailed when `if_match`
        is not the current version, ConfigConflict when another record came first,
        HStreamError when HStreamDB does not take it."""
        async with self._write_lock:
            if not self._caught_up.is_set():
                raise ConfigConflict("this replica has not read the configuration stream yet")
            current = self.version
            if if_match is not None and if_match != current:
                raise PreconditionFailed(if_match, current)
            if expected_version is not None and expected_version != current:
                raise ConfigConflict(f"the configuration changed (now version {current})")
            nonce = uuid.uuid4().hex
            future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
            self._waiting[nonce] = future
            try:
                await self._append(
                    {
                        "version": current + 1,
                        "prev_version": current,
                        "rules": list(rules),
                        "sources": list(sources),
                        "replica": self._replica,
                        "nonce": nonce,
                        "ts": int(time.time() * 1000),
                    }
                )
                async with asyncio.timeout(30.0):
                    won = await future
            finally:
                self._waiting.pop(nonce, None)
            if not won:
                raise ConfigConflict(
                    f"another replica changed the configuration first (now version {self.version})"
                )
            return current + 1

    async def _append(self, document: Mapping[str, Any]) -> None:
        record = Record(orjson.dumps(document), key="config")
        try:
            await self._client.append(self.stream, [record])
        except StreamNotFound:
            await self._create()
            await self._client.append(self.stream, [record])

    async def _create(self) -> None:
        with contextlib.suppress(StreamExists):
            await self._client.create_stream(
                self.stream, shard_count=1, replication_factor=self._replication_factor
            )

    # --- following ----------------------------------------------------------------------------

    async def _follow(self) -> None:
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                shard = await self._shard()
                await self._read(shard, follow=False)  # to the tail as it is now: versions only
                if self.document is not None and self.document is not self._applied:
                    await self._apply(self.document)
                self._caught_up.set()
                self.error = None
                backoff.reset()
                await self._read(shard, follow=True)
            except HStreamError as exc:
                self.error = f"the configuration stream cannot be read: {exc}"
                logger.warning("%s", self.error)
                await asyncio.sleep(backoff.next())

    async def _shard(self) -> int:
        try:
            shards = await self._client.list_shards(self.stream)
        except StreamNotFound:
            await self._create()
            shards = await self._client.list_shards(self.stream)
        return shards[0].shard_id

    async def _read(self, shard: int, *, follow: bool) -> None:
        offset: RecordId | Literal["earliest"] = (
            self._last_id if self._last_id is not None else "earliest"
        )
        reader = self._client.read_shard(
            self.stream, shard, offset=offset, follow=follow, poll_interval=self._poll_interval
        )
        async with reader:
            async for record in reader:
                if self._last_id is not None and _key(record.id) <= _key(self._last_id):
                    continue  # the offset's own record, read again
                self._last_id = record.id
                await self._take(record.payload, apply=follow)

    async def _apply(self, document: Document) -> None:
        self._applied = document
        try:
            await self._on_apply(document)
        except Exception:  # the document stands; the replica reports it and goes on
            logger.exception("configuration version %d could not be applied here", document.version)

    async def _take(self, payload: bytes | dict[str, Any], *, apply: bool = True) -> None:
        try:
            data = orjson.loads(payload) if isinstance(payload, bytes) else payload
            prev = int(data["prev_version"])
            version = int(data["version"])
            nonce = str(data.get("nonce", ""))
            document = Document(
                version,
                tuple(data.get("rules", ())),
                tuple(data.get("sources", ())),
                str(data.get("replica", "")),
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.error("ignoring a malformed record in %s: %r", self.stream, exc)  # noqa: TRY400
            return
        won = prev == self.version and version == prev + 1
        if won:
            if apply or nonce in self._waiting:  # a proposer answers once it is applied here
                await self._apply(document)
            self.version = version
            self.document = document
        waiting = self._waiting.get(nonce)
        if waiting is not None and not waiting.done():
            waiting.set_result(won)


def _key(record_id: RecordId) -> tuple[int, int]:
    return (record_id.batch_id, record_id.batch_index)
