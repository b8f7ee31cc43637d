"""Committed source positions, kept in HStreamDB: one internal one-shard stream per source.

Each record is `{"source": id, "position": {...} | null, "replica": ..., "ts": ms}`, appended
AFTER every record up to that position is stored; the stream's last record is the position to
resume from. `null` asks for a re-snapshot (the source starts over as if new). Nothing lives on
local disk, so a replacement host (or another replica) resumes where the last one stopped.
HStreamDB may drop old records by retention: `save` is called again at least every
`REFRESH_SECONDS` by the runner, so the last position is always recent.
"""

import contextlib
import time
from collections.abc import Mapping
from typing import Any, Final

import orjson

from bridge.hstream.client import HStreamClient
from bridge.hstream.errors import StreamExists, StreamNotFound
from bridge.hstream.records import Record

__all__ = ["REFRESH_SECONDS", "PositionStore"]

REFRESH_SECONDS: Final = 3600.0


class PositionStore:
    def __init__(
        self,
        client: HStreamClient,
        stream: str,
        source_id: str,
        *,
        replica: str,
        replication_factor: int = 1,
    ) -> None:
        self._client = client
        self.stream = stream
        self._source_id = source_id
        self._replica = replica
        self._replication_factor = replication_factor

    async def load(self) -> Mapping[str, Any] | None:
        """The last committed position; None when nothing was committed (or a re-snapshot was
        asked for). Raises HStreamError when HStreamDB does not answer."""
        try:
            last = await self._client.read_last(self.stream, 1)
        except StreamNotFound:
            return None
        if not last:
            return None
        payload = last[-1].payload
        if isinstance(payload, bytes):
            payload = orjson.loads(payload)
        position = payload.get("position") if isinstance(payload, dict) else None
        return position if isinstance(position, dict) else None

    async def save(self, position: Mapping[str, Any] | None) -> None:
        """Append `position` as the committed one; creates the stream on first use."""
        record = Record(
            orjson.dumps(
                {
                    "source": self._source_id,
                    "position": position,
                    "replica": self._replica,
                    "ts": int(time.time() * 1000),
                }
            ),
            key=self._source_id,
        )
        try:
            await self._client.append(self.stream, [record])
        except StreamNotFound:
            with contextlib.suppress(StreamExists):
                await self._client.create_stream(
                    self.stream, shard_count=1, replication_factor=self._replication_factor
                )
            await self._client.append(self.stream, [record])

    async def delete(self) -> None:
        """Forget the source's positions (it was deleted)."""
        with contextlib.suppress(StreamNotFound):
            await self._client.delete_stream(self.stream, force=True)
