"""CDC sources in bridge processes that die: kill -9 mid-stream, two replicas on one source,
and kill -9 inside a transaction large enough to be handed over in parts.

Two `hstream-bridge run` processes share one store process and one source; the database lock
lets one run it while the other stands by. The one running is SIGKILLed while a writer commits
transactions; the other must take over within 10 s, and every transaction must be stored, each
row's changes in commit order (a repeat of what was stored but not committed is allowed).
"""

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

from bridge.cdc._model import PART_CHANGES
from bridge.cdc.config import Source
from tests.cdc.databases import Database, toml_sources
from tests.cdc.helpers import changes, first_seen, source_body, stream_of, wait_changes, wait_state
from tests.faults.ledger import RESULTS, Ledger
from tests.support.bridge import BridgeProcess, read_stream, wait_until
from tests.support.grpc_faults import FaultProxy
from tests.support.mosquitto import Mosquitto
from tests.support.store import subprocess_store

KEYS = 10
WRITES = 1500


def _write(database: Database, start: int, stop: int) -> None:
    database.execute_each(
        f"UPDATE items SET n = {n} WHERE id = {n % KEYS}" for n in range(start, stop)
    )


async def _all_values(url: str, stream: str) -> list[dict[str, Any]]:
    """The stream's changes once every written value is in it."""
    found: list[dict[str, Any]] = []

    async def complete() -> bool:
        nonlocal found
        found = changes(await read_stream(url, stream))
        return {c["after"]["n"] for c in found} >= set(range(WRITES))

    await wait_until(complete, 30.0, f"every value in {stream}")
    return found


def _order(change: dict[str, Any]) -> int:
    """Where a change's transaction stands in commit order: its LSN, or its GTID's sequence."""
    source = change["source"]
    return int(source["lsn"]) if "lsn" in source else int(str(source["gtid"]).split("-")[-1])


def _position_order(position: dict[str, Any] | None) -> int:
    if not position:
        return -1
    if "lsn" in position:
        return int(position["lsn"])
    return int(str(position["gtid"]).split(",")[-1].split("-")[-1])


def _updated(change: dict[str, Any]) -> bool:
    return bool(change["op"] == "u")


def _value(change: dict[str, Any]) -> int:
    return int(change["after"]["n"])


async def _committed(url: str, positions: str) -> int:
    """The committed position as stored in the source's positions stream, in commit order."""
    records = await read_stream(url, positions)
    if not records:
        return -1
    payload = records[-1].payload
    data = orjson.loads(payload) if isinstance(payload, bytes) else payload
    return _position_order(data.get("position"))


def _status(bridge: BridgeProcess) -> dict[str, Any]:
    """The replica's source status (transactions: those with changes handed to its pipeline)."""
    response = httpx.get(f"{bridge.api_url}/sources", timeout=5)
    status: dict[str, Any] = response.json()[0]["status"]
    return status


def _transactions(bridge: BridgeProcess) -> int:
    return int(_status(bridge)["transactions"])


def _done_committing(bridge: BridgeProcess) -> bool:
    return bool(_status(bridge)["pending_transactions"] == 0)


def _one_source(
    tmp_path: Path, database: Database, create: str, table: str
) -> tuple[str, Path, str, str]:
    """A table and one source on it in a config file: (source id, the file, the source's
    stream for the table, its positions stream)."""
    source_id, dsn, qualified = database.prepare(create, table)
    body = source_body(source_id, database.kind, dsn, [qualified])
    config = tmp_path / "bridge.toml"
    config.write_text(toml_sources([body]))
    positions = Source.model_validate(body).positions_stream
    return source_id, config, stream_of(source_id, table), positions


async def _bridge(
    tmp: Path, name: str, hstream_url: str, broker: Mosquitto, config: Path
) -> BridgeProcess:
    args = [
        "--hstream-url", hstream_url, "--mqtt-url", broker.url, "--client-id", name,
        "--config", str(config), "--retry-backoff-min", "0.05", "--retry-backoff-max", "0.5",
    ]  # fmt: skip
    process = BridgeProcess(tmp / name, args)
    await process.start()
    return process


async def test_kill_9_of_the_running_replica_the_standby_takes_over_with_no_lost_change(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto
) -> None:
    source_id, config, stream, positions = _one_source(
        tmp_path, database, "CREATE TABLE items (id INT PRIMARY KEY, n INT NOT NULL)", "items"
    )
    values = ",".join(f"({k}, -1)" for k in range(KEYS))
    database.execute(f"INSERT INTO items VALUES {values}")
    async with (
        subprocess_store(tmp_path / "store") as store,
        FaultProxy(store.url) as proxy,
    ):
        first = await _bridge(tmp_path, "first", proxy.url, shared_mosquitto, config)
        second: BridgeProcess | None = None
        try:
            await wait_state(first.api_url, source_id, "streaming")
            second = await _bridge(tmp_path, "second", proxy.url, shared_mosquitto, config)
            await wait_state(second.api_url, source_id, "standby")
            await asyncio.to_thread(_write, database, 0, WRITES // 2)
            await wait_changes(store.url, stream, KEYS + WRITES // 2)
            # Appends of the changes held before the store, positions not: the first replica
            # reads on, its records stay in flight, and it must commit none of them.
            delivered = _transactions(first)
            hold = proxy.hold("Append", stream=stream, before=True)
            writer = asyncio.create_task(asyncio.to_thread(_write, database, WRITES // 2, WRITES))
            await hold.wait(1, timeout=20)  # the change appends are held, not just slow
            stored_then = max(map(_order, changes(await read_stream(store.url, stream))))

            def read_on() -> bool:
                """50 more transactions read, and either held uncommitted (as they must be) or
                (a bug) a position saved past what is stored: the kill tests either."""
                status = _status(first)
                committed = _position_order(status["committed_position"])
                return status["transactions"] >= delivered + 50 and (
                    status["pending_transactions"] >= 50 or committed > stored_then
                )

            await wait_until(read_on, 20, "changes read while held")
            # The runner commits every 0.1 s: three rounds, so that a runner which would commit
            # a position whose records are held has done it before the kill.
            await asyncio.sleep(0.3)
            first.kill()
            killed = time.monotonic()
            # The promise at the instant of the kill: every change up to the committed position
            # (its "acknowledgement") is stored.
            at_kill = await _committed(store.url, positions)
            stored_at_kill = changes(await read_stream(store.url, stream))
            proxy.clear()  # the standby's appends go through
            await wait_state(second.api_url, source_id, "streaming", timeout=15.0)
            takeover = time.monotonic() - killed
            print(f"\nstandby took over {takeover:.2f} s after kill -9")
            assert takeover < 10.0
            await writer
            found = await _all_values(store.url, stream)
            await wait_until(
                lambda: _done_committing(second), 20, "the standby to commit every change"
            )
            at_end = await _committed(store.url, positions)
        finally:
            if first.process is not None and first.process.poll() is None:
                first.kill()
            if second is not None:
                second.kill()
    kind = database.kind
    for scenario, committed, stored in (
        (f"CDC {kind}, kill -9 of the running replica: at the kill", at_kill, stored_at_kill),
        (f"CDC {kind}, kill -9, the standby took over", at_end, found),
    ):
        ledger = Ledger(
            scenario,
            WRITES,
            acked=[_value(c) for c in found if _updated(c) and _order(c) <= committed],
            stored=[_value(c) for c in stored if _updated(c)],
        )
        RESULTS.append(ledger.check())
    assert len(set(RESULTS[-1].acked)) == WRITES  # everything committed in the end
    by_key: dict[int, list[int]] = {}
    for change in found:
        row = change["after"]
        by_key.setdefault(row["id"], []).append(row["n"])
    for key, ns in by_key.items():
        assert first_seen(ns) == sorted(first_seen(ns)), f"key {key} out of order"
    print(
        f"{len(found)} records for {KEYS + WRITES} changes ({len(found) - KEYS - WRITES} repeats)"
    )


async def test_kill_9_inside_a_large_transaction_commits_no_part_and_it_is_stored_whole(
    tmp_path: Path, database: Database, shared_mosquitto: Mosquitto
) -> None:
    """One transaction of four parts: its first two appends are stored and answered (a whole
    part at least), the next is held before the store, and the replica is SIGKILLed. No
    position of a part may be committed (the next replica would start after the whole
    transaction); the next replica reads it again from its start and stores all of it."""
    source_id, config, stream, positions = _one_source(
        tmp_path, database, "CREATE TABLE big (id INT PRIMARY KEY, n INT NOT NULL)", "big"
    )
    rows = 4 * PART_CHANGES
    async with (
        subprocess_store(tmp_path / "store") as store,
        FaultProxy(store.url) as proxy,
    ):
        first = await _bridge(tmp_path, "first", proxy.url, shared_mosquitto, config)
        second: BridgeProcess | None = None
        try:
            await wait_state(first.api_url, source_id, "streaming")
            database.execute("INSERT INTO big VALUES (0, 0)")  # a committed position before
            await wait_changes(store.url, stream, 1)
            await wait_until(lambda: _done_committing(first), 20, "the first row committed")
            before = await _committed(store.url, positions)
            proxy.delay("Append", 0.0, stream=stream, times=2)  # these two go through
            hold = proxy.hold("Append", stream=stream, before=True)  # the rest wait
            values = ",".join(f"({n}, {n})" for n in range(1, rows + 1))
            await asyncio.to_thread(database.execute, f"INSERT INTO big VALUES {values}")
            await hold.wait(1, timeout=20)
            stored_then = len(changes(await read_stream(store.url, stream))) - 1
            assert PART_CHANGES < stored_then < rows, stored_then  # a whole part, not all
            # The runner commits every 0.1 s: three rounds, so that a runner which would commit
            # a stored part's position has done it before the kill.
            await asyncio.sleep(0.3)
            first.kill()
            at_kill = await _committed(store.url, positions)
            stored_at_kill = changes(await read_stream(store.url, stream))
            proxy.clear()
            second = await _bridge(tmp_path, "second", proxy.url, shared_mosquitto, config)
            await wait_state(second.api_url, source_id, "streaming", timeout=15.0)
            found: list[dict[str, Any]] = []

            async def whole() -> bool:
                nonlocal found
                found = changes(await read_stream(store.url, stream))
                return {c["after"]["n"] for c in found} >= set(range(rows + 1))

            await wait_until(whole, 30.0, "every row of the transaction")
            await wait_until(lambda: _done_committing(second), 20, "the transaction committed")
            at_end = await _committed(store.url, positions)
        finally:
            if first.process is not None and first.process.poll() is None:
                first.kill()
            if second is not None:
                second.kill()
    big = [c for c in found if c["after"]["n"] > 0]
    transaction = _order(big[0])
    kind = database.kind
    for scenario, committed, stored in (
        (
            f"CDC {kind}, kill -9 inside a {rows}-row transaction: at the kill",
            at_kill,
            stored_at_kill,
        ),
        (f"CDC {kind}, kill -9 inside a {rows}-row transaction: next replica", at_end, found),
    ):
        ledger = Ledger(
            scenario,
            rows,
            acked=[c["after"]["n"] for c in big if transaction <= committed],
            stored=[c["after"]["n"] for c in stored if c["after"]["n"] > 0],
        )
        RESULTS.append(ledger.check())
    assert at_kill == before, "a part's position was committed"
    assert at_end >= transaction
    assert len(set(RESULTS[-1].acked)) == rows
    print(f"\n{stored_then} of {rows} rows stored at the kill; {len(big)} records in the end")
