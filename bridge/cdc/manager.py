"""The set of CDC sources of one bridge: persisted, applied live, one runner per enabled source.

Changing a source stops its runner (the reader closes its connections and releases the lock) and
starts a new one from the committed position; disabling stops it; deleting also drops what the
source keeps in the database (PostgreSQL: its replication slot and publication) and its
positions, so a source created again with the same id starts with a new snapshot.
"""

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from bridge.cdc._model import Reader, ReaderError
from bridge.cdc.config import Source
from bridge.cdc.positions import PositionStore
from bridge.cdc.runner import Pipeline, SourceRunner
from bridge.cdc.store import SourcesFile
from bridge.hstream.client import HStreamClient
from bridge.hstream.errors import HStreamError

__all__ = ["CdcSources", "make_reader"]

logger = logging.getLogger(__name__)


def make_reader(source: Source) -> Reader:
    if source.kind == "postgres":
        from bridge.cdc.postgres import PostgresReader

        return PostgresReader(source)
    from bridge.cdc.mysql import MysqlReader

    return MysqlReader(source)


class CdcSources:
    def __init__(
        self,
        pipeline: Pipeline,
        client: HStreamClient,
        file: SourcesFile,
        *,
        replica: str,
        replication_factor: int = 1,
        reader_factory: Callable[[Source], Reader] = make_reader,
        may_run: Callable[[str], bool] | None = None,
    ) -> None:
        self._pipeline = pipeline
        self._client = client
        self.file = file
        self._replica = replica
        self._replication_factor = replication_factor
        self._reader_factory = reader_factory
        self._may_run = may_run
        self.sources: list[Source] = []
        self.runners: dict[str, SourceRunner] = {}
        self._lock = asyncio.Lock()

    def _positions(self, source: Source) -> PositionStore:
        return PositionStore(
            self._client,
            source.positions_stream,
            source.id,
            replica=self._replica,
            replication_factor=self._replication_factor,
        )

    def get(self, source_id: str) -> Source | None:
        return next((s for s in self.sources if s.id == source_id), None)

    def status(self, source_id: str) -> dict[str, Any]:
        runner = self.runners.get(source_id)
        source = self.get(source_id)
        if runner is None:
            return {"state": "disabled" if source is not None else "unknown"}
        return runner.status.public()

    async def start(self, sources: list[Source]) -> None:
        async with self._lock:
            self.sources = list(sources)
            for source in self.sources:
                if source.enabled:
                    self._start(source)

    def _start(self, source: Source) -> None:
        may_run = self._may_run
        runner = SourceRunner(
            source,
            self._reader_factory(source),
            self._pipeline,
            self._positions(source),
            may_run=(lambda: may_run(source.id)) if may_run is not None else None,
        )
        self.runners[source.id] = runner
        runner.start()
        logger.info("source %s (%s) started", source.id, source.kind)

    async def apply(self, sources: list[Source], deleted: Sequence[Source] = ()) -> None:
        """Cache `sources` (a file that cannot be written is logged), then stop what changed or
        went and start what is new."""
        async with self._lock:
            try:
                await asyncio.to_thread(self.file.save, sources)
            except OSError as exc:  # a cache: the sources apply; a start without HStreamDB reads it
                logger.error("the sources cache file %s was not written: %s", self.file.path, exc)  # noqa: TRY400
            wanted = {s.id: s for s in sources if s.enabled}
            for source_id, runner in list(self.runners.items()):
                if wanted.get(source_id) != runner.source:
                    del self.runners[source_id]
                    await runner.stop()
                    logger.info("source %s stopped", source_id)
            self.sources = list(sources)
            for source in sources:
                if source.enabled and source.id not in self.runners:
                    self._start(source)
            for source in deleted:
                await self._drop(source)

    async def _drop(self, source: Source) -> None:
        reader = self._reader_factory(source)
        try:
            await reader.drop()
        except ReaderError as exc:
            logger.warning(
                "source %s deleted, but what it keeps in the database could not be dropped "
                "(%s); see docs/cdc.md to drop it by hand",
                source.id,
                exc,
            )
        try:
            await self._positions(source).delete()
        except HStreamError as exc:
            logger.warning("source %s: positions stream not deleted: %s", source.id, exc)

    def resnapshot(self, source_id: str) -> bool:
        runner = self.runners.get(source_id)
        if runner is None:
            return False
        runner.resnapshot()
        return True

    async def stop_intake(self) -> None:
        """Stop every reader; commits go on until `aclose`."""
        for runner in self.runners.values():
            runner.stop_reading()
        await asyncio.gather(*(r.wait_reading_stopped() for r in self.runners.values()))

    async def aclose(self, commit_timeout: float = 5.0) -> None:
        runners = list(self.runners.values())
        self.runners.clear()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(r.stop(commit_timeout) for r in runners))

    def statuses(self) -> Mapping[str, SourceRunner]:
        return self.runners
