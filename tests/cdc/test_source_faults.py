"""Faults around a running source, through the whole bridge: HStreamDB down for a while (the
source stops reading, nothing is lost), the database restarted (waited out, no committed change
repeats), and deleting a source (its slot is dropped, so the database stops keeping WAL for it).
"""

import asyncio
from pathlib import Path

import httpx
import pytest

from bridge.cdc._model import PART_CHANGES
from tests.cdc.databases import Database
from tests.cdc.helpers import changes, source_body, stream_of, wait_changes, wait_state
from tests.support.bridge import bridge_settings, read_stream, running_bridge, wait_until
from tests.support.mosquitto import Mosquitto
from tests.support.store import subprocess_store

ITEMS = "CREATE TABLE items (id INT PRIMARY KEY, body VARCHAR(200))"
BODY = "x" * 150


def _inserts(first: int, count: int, per_txn: int = 100) -> list[str]:
    return [
        "INSERT INTO items VALUES "
        + ",".join(f"({n}, '{BODY}')" for n in range(start, min(start + per_txn, first + count)))
        for start in range(first, first + count, per_txn)
    ]


@pytest.mark.parametrize("per_txn", [100, 5000], ids=["small-transactions", "one-transaction"])
async def test_a_store_outage_pauses_the_source_within_the_budget_and_loses_nothing(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto, per_txn: int
) -> None:
    """With 5,000 rows in one transaction the source hands it over in parts, each waiting for
    room: the budget is exceeded by at most one part, not by the whole transaction."""
    source_id, dsn, table = database.prepare(ITEMS, "items")
    budget = 256 * 1024
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            shared_mosquitto.url,
            client_id=f"cdc-{source_id}",
            hstream_url=store.url,
            buffer_bytes=budget,
            batch_max_bytes=64 * 1024,
            sources=[source_body(source_id, database.kind, dsn, [table])],
        )
        async with running_bridge(settings) as bridge:
            assert bridge.api_url is not None
            assert bridge.accumulator is not None
            await wait_state(bridge.api_url, source_id, "streaming")
            store.kill()
            # ~1.5 MB of records: 6x the budget
            database.execute_each(_inserts(0, 5000, per_txn=per_txn))
            runner = bridge.cdc.runners[source_id] if bridge.cdc else None
            assert runner is not None
            await wait_until(lambda: bridge.room.is_set() is False, 20, "the budget to be spent")
            peak = 0
            for _ in range(50):  # while the store is down: 1 s of samples, bounded
                peak = max(peak, bridge.accumulator.buffered_bytes)
                await asyncio.sleep(0.02)
            delivered = runner.status.changes.get("c", 0)
            assert delivered < 5000, "the source read on although the budget was spent"
            # + one transaction, or one part of one, handed over (~1 KiB a row in memory)
            assert peak <= budget + min(per_txn, PART_CHANGES) * 1024, peak
            await store.start()
            found = await wait_changes(store.url, stream_of(source_id, "items"), 5000, 60)
    ids = [c["after"]["id"] for c in found]
    assert set(ids) == set(range(5000))
    print(f"\n{database.kind}, {per_txn} rows a transaction: paused at {delivered} of 5000 rows, "
          f"peak {peak} B buffered")  # fmt: skip


async def test_a_database_restart_is_waited_out_and_committed_changes_do_not_repeat(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto
) -> None:
    source_id, dsn, table = database.prepare(ITEMS, "items")
    settings = bridge_settings(
        tmp_path,
        shared_mosquitto.url,
        client_id=f"cdc-{source_id}",
        sources=[source_body(source_id, database.kind, dsn, [table])],
    )
    stream = stream_of(source_id, "items")
    async with running_bridge(settings) as bridge:
        assert bridge.api_url is not None
        store = bridge.store.url
        await wait_state(bridge.api_url, source_id, "streaming")
        database.execute_each(_inserts(0, 500, per_txn=10))
        await wait_changes(store, stream, 500)

        def all_committed() -> bool:
            status = bridge.source_status(source_id)
            return bool(status["pending_transactions"] == 0 and status["committed_position"])

        await wait_until(all_committed, 10, "every transaction committed")
        # In a thread: a PostgreSQL shutdown waits for the bridge (this event loop) to confirm.
        await asyncio.to_thread(database.restart)
        database.execute_each(_inserts(500, 500, per_txn=10))
        found = await wait_changes(store, stream, 1000, 60)
        await wait_state(bridge.api_url, source_id, "streaming")
        found = changes(await read_stream(store, stream))
    ids = [c["after"]["id"] for c in found]
    assert sorted(ids) == list(range(1000)), "a committed change came again, or one is missing"


async def test_deleting_a_source_drops_its_slot_and_positions(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto
) -> None:
    source_id, dsn, table = database.prepare(ITEMS, "items")
    settings = bridge_settings(tmp_path, shared_mosquitto.url, client_id=f"cdc-{source_id}")
    async with running_bridge(settings) as bridge:
        assert bridge.api_url is not None
        async with httpx.AsyncClient(base_url=bridge.api_url) as http:
            body = source_body(source_id, database.kind, dsn, [table])
            assert (await http.post("/sources", json=body)).status_code == 201
            await wait_state(bridge.api_url, source_id, "streaming")
            if database.kind == "postgres":
                assert len(database.slots()) == 1
            assert (await http.delete(f"/sources/{source_id}")).status_code == 204
            assert (await http.get(f"/sources/{source_id}")).status_code == 404
        assert database.slots() == []
        positions = f"hstream_bridge_positions_{source_id}"
        assert bridge.client is not None
        names = [s.name for s in await bridge.client.list_streams()]
        assert not [n for n in names if n.startswith(positions)]


async def test_with_the_disk_buffer_changes_are_read_on_during_an_outage_and_stored_after(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto
) -> None:
    source_id, dsn, table = database.prepare(ITEMS, "items")
    async with subprocess_store(tmp_path / "store") as store:
        settings = bridge_settings(
            tmp_path / "bridge",
            shared_mosquitto.url,
            client_id=f"cdc-{source_id}",
            hstream_url=store.url,
            buffer="disk",
            sources=[source_body(source_id, database.kind, dsn, [table])],
        )
        async with running_bridge(settings) as bridge:
            assert bridge.api_url is not None
            await wait_state(bridge.api_url, source_id, "streaming")
            store.kill()
            database.execute_each(_inserts(0, 1000))
            runner = bridge.cdc.runners[source_id] if bridge.cdc else None
            assert runner is not None
            # Durable on the bridge's disk: read on, though HStreamDB is down.
            await wait_until(lambda: runner.status.changes.get("c", 0) == 1000, 30, "1000 rows")
            disk = bridge.disk
            assert disk is not None
            await wait_until(lambda: disk.written_total >= 1000, 10, "1000 records on disk")
            # Positions live in HStreamDB: they are committed once it is back (the database
            # keeps its log until then).
            assert runner.status.pending_transactions > 0
            await store.start()
            found = await wait_changes(store.url, stream_of(source_id, "items"), 1000, 60)
            await wait_until(lambda: runner.status.pending_transactions == 0, 30, "commits")
    assert {c["after"]["id"] for c in found} == set(range(1000))
