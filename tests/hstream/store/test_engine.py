"""The store engine alone: metadata changes and their callers' cancellation."""

import asyncio
from pathlib import Path

from bridge.hstream.shards import split_key_space
from bridge.hstream.store.engine import Engine, StreamMeta
from tests.support.bridge import wait_until


async def test_a_stream_created_by_a_caller_that_goes_away_is_known_in_memory_too(
    tmp_path: Path,
) -> None:
    # A client killed mid-CreateStream cancels the handler; the commit still happens, and the
    # stream must then exist in memory as well (it was committed but unknown: every later
    # CreateStream failed on the UNIQUE constraint and every lookup said it did not exist).
    engine = Engine(tmp_path)
    await engine.open()
    try:
        call = asyncio.create_task(
            engine.create_stream(StreamMeta("s", 1, 0, 2, 0), split_key_space(2))
        )
        await asyncio.sleep(0)  # queued for the next commit
        call.cancel()
        await wait_until(lambda: "s" in engine.streams, 5, "the stream in memory")
        assert len(engine.stream_shards("s")) == 2
    finally:
        await engine.close()
    reopened = Engine(tmp_path)
    await reopened.open()
    try:
        assert "s" in reopened.streams
    finally:
        await reopened.close()
