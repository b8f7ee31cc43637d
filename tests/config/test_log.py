"""The config log against a real embedded store: replicas follow it, races have one winner."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import orjson
import pytest

from bridge.config import ConfigConflict, ConfigLog, Document, PreconditionFailed
from bridge.hstream.client import HStreamClient
from bridge.hstream.records import Record
from tests.support.bridge import wait_until
from tests.support.store import inprocess_store

STREAM = "hstream_bridge_config"


class Replica:
    def __init__(self, client: HStreamClient, name: str) -> None:
        self.applied: list[Document] = []
        self.log = ConfigLog(client, STREAM, replica=name, on_apply=self._apply)

    async def _apply(self, document: Document) -> None:
        self.applied.append(document)


@contextlib.asynccontextmanager
async def replicas(count: int) -> AsyncIterator[tuple[HStreamClient, list[Replica]]]:
    async with inprocess_store() as store, HStreamClient(store.url) as client:
        group = [Replica(client, f"r{n}") for n in range(count)]
        for replica in group:
            replica.log.start()
        try:
            for replica in group:
                assert await replica.log.wait_caught_up(10)
            yield client, group
        finally:
            for replica in group:
                await replica.log.aclose()


def rule(n: int) -> dict[str, object]:
    return {"id": f"r{n}", "topic": f"t/{n}", "stream": f"s{n}"}


async def test_a_change_on_one_replica_is_applied_on_the_others() -> None:
    async with replicas(3) as (_, (a, b, c)):
        started = time.monotonic()
        version = await a.log.propose([rule(1)], [])
        assert version == 1
        assert a.applied[-1].rules == ({"id": "r1", "topic": "t/1", "stream": "s1"},)
        await wait_until(lambda: b.log.version == 1 and c.log.version == 1, 2.0, "b and c")
        print(f"\napplied on every replica {time.monotonic() - started:.3f} s after the write")
        assert b.applied == c.applied == a.applied


async def test_concurrent_writes_on_two_replicas_one_wins_and_all_agree() -> None:
    async with replicas(3) as (_, (a, b, c)):
        results = await asyncio.gather(
            a.log.propose([rule(1)], []), b.log.propose([rule(2)], []), return_exceptions=True
        )
        won = [r for r in results if r == 1]
        lost = [r for r in results if isinstance(r, ConfigConflict)]
        assert len(won) == 1, results
        assert len(lost) == 1, results
        await wait_until(lambda: all(r.log.version == 1 for r in (a, b, c)), 2.0)
        assert a.log.document == b.log.document == c.log.document


async def test_if_match_must_name_the_current_version() -> None:
    async with replicas(1) as (_, (a,)):
        await a.log.propose([rule(1)], [])
        with pytest.raises(PreconditionFailed):
            await a.log.propose([rule(2)], [], if_match=0)
        assert await a.log.propose([rule(2)], [], if_match=1) == 2


async def test_a_restarted_replica_applies_only_the_last_version_skipping_losers_and_garbage() -> (
    None
):
    async with inprocess_store() as store, HStreamClient(store.url) as client:
        first = Replica(client, "a")
        first.log.start()
        assert await first.log.wait_caught_up(10)
        await first.log.propose([rule(1)], [])
        # A record that lost (same prev_version) and one that is not a document at all.
        loser = {"version": 1, "prev_version": 0, "rules": [rule(9)], "sources": []}
        await client.append(STREAM, [Record(orjson.dumps(loser)), Record(b"not json")])
        await first.log.propose([rule(1), rule(2)], [])
        await first.log.aclose()
        again = Replica(client, "a")
        again.log.start()
        try:
            assert await again.log.wait_caught_up(10)
            assert again.log.version == 2
            # The newest version only, once: running the old ones in turn restarted what was
            # deleted since (a source, and its database slot).
            assert [d.version for d in again.applied] == [2]
            assert [r["id"] for r in again.applied[-1].rules] == ["r1", "r2"]
        finally:
            await again.log.aclose()
